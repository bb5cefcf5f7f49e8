"""Operations on convergence patches that several stages share.

The noise step smooths the noisy maps, the segmentation cuts the smoothed detection map, the
structure analysis measures groups in units of that map's standard deviation and the summary
statistics count peaks on smoothed maps: all of them smooth and combine the bins here, so that
each sees the same map.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

#: Boundary handling of the smoothing. Patches are cut from the sphere, so their opposite edges
#: are unrelated and "wrap" would blend them; "constant" (zero padding) would pull the edge
#: pixels towards zero and lower their noise, faking structure along the border. "reflect"
#: (mirror about the edge) keeps the local mean and, to a good approximation, the local variance.
SMOOTHING_MODE = "reflect"


def smooth_maps(maps: np.ndarray, sigma_pixels: float) -> np.ndarray:
    """Gaussian-smooth each map over its last two axes (y, x).

    Parameters
    ----------
    maps
        Maps of shape (..., y, x).
    sigma_pixels
        Standard deviation of the Gaussian kernel, in pixels; 0 or less returns ``maps``
        itself.

    Returns
    -------
    ndarray
        Same shape and dtype as ``maps``, edges handled by :data:`SMOOTHING_MODE`.
    """
    if sigma_pixels <= 0:
        return maps
    sigma = (0.0,) * (maps.ndim - 2) + (sigma_pixels, sigma_pixels)
    return ndimage.gaussian_filter(maps, sigma=sigma, mode=SMOOTHING_MODE)


def detection_map(kappa: np.ndarray) -> np.ndarray:
    """The mean over bins of each bin's standardised map: the map that is segmented.

    Parameters
    ----------
    kappa
        Patches of shape (..., bin, y, x).

    Returns
    -------
    ndarray
        Shape (..., y, x), float64, dimensionless (units of each bin's standard deviation over
        the patch). A constant bin (zero standard deviation) contributes zero rather than NaN.
    """
    kappa = np.asarray(kappa, dtype=np.float64)
    centred = kappa - kappa.mean(axis=(-2, -1), keepdims=True)
    std = centred.std(axis=(-2, -1), keepdims=True)
    standardised = np.divide(centred, std, out=np.zeros_like(centred), where=std > 0)
    return standardised.mean(axis=-3)
