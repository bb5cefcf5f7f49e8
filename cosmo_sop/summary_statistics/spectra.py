"""Binned flat-sky angular power spectra of stacks of small patches.

Flat-sky auto spectra of every bin and, optionally, the cross spectra of every pair of bins
(C (C + 1) / 2 spectra in all), averaged over the Fourier modes in log-spaced multipole bins from
the fundamental mode of the patch, ``ell_min = 2 pi / (side in rad)``, to the Nyquist multipole
of the pixels, ``ell_max = pi / (pixel in rad)``. ``C_ell`` is in steradians (kappa is
dimensionless). Patches are cut from the sphere, so their opposite edges do not match: the map
is apodised by a cosine (Tukey) taper to keep the edge discontinuity from leaking power into
high multipoles, and the spectrum is divided by the mean square of the window (the result is the
spectrum convolved with the window's normalised power, unbiased for spectra that vary slowly
over the width of its transform). The window-weighted mean of each map is removed first: kappa
spectra are red, and the patch mean (the modes larger than the patch) would otherwise leak
through the window into the lowest bins. Removing it takes a little power out of the modes
within the main lobe of the window's transform too (the integral constraint; -4 % in the lowest
bin of white noise for the default taper, tens of per cent for a full Hann window), which
``tests/test_summary_statistics.py`` checks exactly.

The spectra are computed here with numpy/scipy because no well-kept library computes them for a
stack of small flat patches without heavy dependencies (NaMaster or lenstools would pull in
compiled stacks for a 20-line FFT).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import scipy.fft
from scipy.signal.windows import tukey

from cosmo_sop.config import defaults
from cosmo_sop.summary_statistics.options import SECTION

ARCMIN = math.pi / (180.0 * 60.0)  # radians per arcminute


def apodisation_window(shape: tuple[int, int], alpha: float) -> np.ndarray:
    """Separable cosine-taper (Tukey) window of shape ``(H, W)``, 1 in the interior.

    ``alpha`` is the fraction of each axis inside the taper (0: no apodisation, 1: Hann).
    """
    wy = tukey(shape[0], alpha, sym=True)
    wx = tukey(shape[1], alpha, sym=True)
    return np.outer(wy, wx)


def ell_bin_edges(shape: tuple[int, int], pixel_arcmin: float, n_bins: int) -> np.ndarray:
    """Log-spaced multipole bin edges, shape ``(n_bins + 1,)``.

    From the fundamental multipole of the shorter side, ``2 pi / (min(H, W) * pixel)``, to the
    Nyquist multipole ``pi / pixel`` (pixel in radians), the range every direction samples.
    """
    pixel = pixel_arcmin * ARCMIN
    return np.geomspace(2 * math.pi / (min(shape) * pixel), math.pi / pixel, n_bins + 1)


@dataclass(frozen=True)
class ModeBinning:
    """Which rfft2 modes fall in which multipole bin, as a (modes, bins) averaging matrix."""

    average: np.ndarray  # (H * (W // 2 + 1), n_bins): weight of each mode in each bin's mean
    ell_effective: np.ndarray  # (n_bins,) mode-weighted mean multipole of each bin
    n_modes: np.ndarray  # (n_bins,) number of Fourier modes (full plane) in each bin


def mode_binning(shape: tuple[int, int], pixel_arcmin: float, edges: np.ndarray) -> ModeBinning:
    """The rfft2 modes of ``(H, W)`` patches of side ``pixel_arcmin`` (arcmin) in each multipole
    bin of ``edges`` (bins without a mode have ``n_modes`` 0 and NaN means)."""
    h, w = shape
    pixel = pixel_arcmin * ARCMIN
    ly = 2 * math.pi * np.fft.fftfreq(h, d=pixel)
    lx = 2 * math.pi * np.fft.rfftfreq(w, d=pixel)
    ell = np.hypot(ly[:, None], lx[None, :]).ravel()
    # rfft2 keeps half the plane: every mode stands for itself and its complex conjugate, except
    # the columns kx = 0 and (even W) kx = Nyquist, which are their own conjugates' columns.
    multiplicity = np.full((h, lx.size), 2.0)
    multiplicity[:, 0] = 1.0
    if w % 2 == 0:
        multiplicity[:, -1] = 1.0
    multiplicity = multiplicity.ravel()
    # A relative tolerance so that the fundamental and Nyquist modes, which sit exactly on the
    # outer edges, are kept despite rounding.
    lo, hi = edges[0] * (1 - 1e-9), edges[-1] * (1 + 1e-9)
    index = np.searchsorted(edges[1:-1], ell, side="right")
    inside = (ell >= lo) & (ell <= hi)
    n_bins = edges.size - 1
    weight = np.zeros((ell.size, n_bins))
    weight[np.flatnonzero(inside), index[inside]] = multiplicity[inside]
    n_modes = weight.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        average = weight / n_modes
        ell_effective = (ell @ weight) / n_modes
    return ModeBinning(average, ell_effective, n_modes)


def spectrum_pairs(n_bins: int, cross: bool) -> np.ndarray:
    """Pairs ``(i, j)`` of bins (0-based) whose spectra are measured, shape ``(P, 2)``.

    All ``i <= j`` in row-major order (``(0,0), (0,1), ..., (1,1), ...``) with ``cross``, else
    the autos ``(i, i)``.
    """
    if cross:
        return np.stack(np.triu_indices(n_bins), axis=1)
    return np.stack([np.arange(n_bins)] * 2, axis=1)


def power_spectra(
    patches: np.ndarray,
    pixel_arcmin: float,
    ell_edges: np.ndarray,
    *,
    cross: bool | None = None,
    apodisation: float | None = None,
    workers: int = 1,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Binned flat-sky angular power spectra of a stack of patches.

    Parameters
    ----------
    patches
        Maps of shape ``(N, C, H, W)`` (dimensionless kappa), C tomographic bins.
    pixel_arcmin
        Pixel side in arcminutes.
    ell_edges
        Multipole bin edges, shape ``(B + 1,)`` (see :func:`ell_bin_edges`).
    cross
        Measure the cross spectra of all pairs of bins too (None: the schema's
        ``summary_statistics.cross_spectra``).
    apodisation
        Tukey window parameter, 0 for no taper (None: the schema's
        ``summary_statistics.apodisation``).
    workers
        Threads of the FFT.

    Returns
    -------
    spectra : ndarray, shape (N, P, B)
        ``C_ell`` in steradians, averaged over the modes of each multipole bin, for the pairs of
        :func:`spectrum_pairs` (P = C (C + 1) / 2 with ``cross``, else C).
    ell : ndarray, shape (B,)
        Mode-weighted mean multipole of each bin.
    pairs : ndarray, shape (P, 2)
        The bin pair of each spectrum.

    Raises
    ------
    ValueError
        If a multipole bin holds no Fourier mode of patches this size (use fewer bins).
    """
    patches = np.asarray(patches)
    if patches.ndim != 4:
        raise ValueError(f"patches must have shape (N, C, H, W), got {patches.shape}")
    n, c, h, w = patches.shape
    schema = defaults(SECTION)
    cross = schema["cross_spectra"] if cross is None else cross
    apodisation = schema["apodisation"] if apodisation is None else apodisation
    binning = mode_binning((h, w), pixel_arcmin, np.asarray(ell_edges, dtype=np.float64))
    if np.any(binning.n_modes == 0):
        empty = np.flatnonzero(binning.n_modes == 0).tolist()
        raise ValueError(
            f"multipole bin(s) {empty} hold no Fourier mode of {h}x{w} patches; use fewer bins"
        )
    window = apodisation_window((h, w), apodisation)
    maps = patches.astype(np.float64)
    # Remove the window-weighted mean, so the tapered map has no ell = 0 power to leak (see the
    # module docstring for the price: the integral constraint on the lowest modes).
    maps = maps - np.einsum("ncyx,yx->nc", maps, window)[..., None, None] / window.sum()
    modes = scipy.fft.rfft2(maps * window, axes=(-2, -1), workers=workers).reshape(n, c, -1)
    # Bins first (contiguous real and imaginary parts of each bin), so the pair products below
    # stream through memory instead of striding over the complex array.
    re = np.ascontiguousarray(modes.real.transpose(1, 0, 2))
    im = np.ascontiguousarray(modes.imag.transpose(1, 0, 2))
    del modes
    pairs = spectrum_pairs(c, cross)
    # |FT|^2 / area with FT = pixel_area * DFT and area = H W pixel_area, over the window's
    # mean square: white noise of pixel variance s^2 then has C_ell = s^2 * pixel_area.
    pixel_area = (pixel_arcmin * ARCMIN) ** 2
    norm = pixel_area / (h * w * np.mean(window**2))
    spectra = np.empty((n, len(pairs), binning.average.shape[1]))
    for k, (i, j) in enumerate(pairs):  # one pair at a time bounds the (N, modes) temporaries
        spectra[:, k] = ((re[i] * re[j] + im[i] * im[j]) @ binning.average) * norm  # Re(a b*)
    return spectra, binning.ell_effective, pairs


def spectrum_features(spectra: np.ndarray, pairs: np.ndarray) -> np.ndarray:
    """Log auto spectra and cross-correlation coefficients, shape ``(N, P * B)``.

    Autos become ``log C_ii`` (the spectra span decades); cross spectra, which may be negative,
    become ``r_ij = C_ij / sqrt(C_ii C_jj)`` in [-1, 1]. Non-positive autos give non-finite
    features (the caller reports them).
    """
    auto_index = {int(i): k for k, (i, j) in enumerate(pairs) if i == j}
    out = np.empty_like(spectra)
    with np.errstate(invalid="ignore", divide="ignore"):
        for k, (i, j) in enumerate(pairs):
            if i == j:
                out[:, k] = np.log(spectra[:, k])
            else:
                norm = np.sqrt(spectra[:, auto_index[int(i)]] * spectra[:, auto_index[int(j)]])
                out[:, k] = spectra[:, k] / norm
    return out.reshape(spectra.shape[0], -1)


# --------------------------------------------------------------------------------------------
