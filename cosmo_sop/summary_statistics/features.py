"""The classical route: power spectra and peak counts of the patches, regressed to (Om, s8).

This is the baseline the CNN and Sum-of-Parts models are compared with, on the same test split:
a weak-lensing analysis compresses each map into a few hundred summary statistics and learns
the map from those to the cosmological parameters.

Summary statistics of one patch (``kappa`` of C tomographic bins, H x W pixels of side
``pixel_arcmin``):

Angular power spectra (:func:`power_spectra`)
    Flat-sky auto spectra of every bin and, optionally, the cross spectra of every pair of bins
    (C (C + 1) / 2 spectra in all), averaged over the Fourier modes in log-spaced multipole bins
    from the fundamental mode of the patch, ``ell_min = 2 pi / (side in rad)``, to the Nyquist
    multipole of the pixels, ``ell_max = pi / (pixel in rad)``. ``C_ell`` is in steradians
    (kappa is dimensionless). Patches are cut from the sphere, so their opposite edges do not
    match: the map is apodised by a cosine (Tukey) taper to keep the edge discontinuity from
    leaking power into high multipoles, and the spectrum is divided by the mean square of the
    window (the result is the spectrum convolved with the window's normalised power, unbiased
    for spectra that vary slowly over the width of its transform). The window-weighted mean of
    each map is removed first: kappa spectra are red, and the patch mean (the modes larger than
    the patch) would otherwise leak through the window into the lowest bins. Removing it takes a
    little power out of the modes within the main lobe of the window's transform too (the
    integral constraint; -4 % in the lowest bin of white noise for the default taper, tens of
    per cent for a full Hann window), which ``tests/test_summary_statistics.py`` checks exactly.
Peak and minimum counts (:func:`peak_counts`)
    Local maxima (value strictly above its 8 neighbours) of the optionally Gaussian-smoothed
    map, histogrammed by height in units of a *global* per-bin scale: the standard deviation of
    the smoothed maps over the train split. A per-patch scale would divide out the amplitude of
    the fluctuations, the main sigma_8 signal, so one fixed scale per bin is used, as survey
    peak-count analyses count peaks in units of the (fixed) noise level. Local minima (void
    tracers) are counted the same way. Pixels on the patch border, whose neighbourhood is
    incomplete, are neither. The outermost height bins are open-ended.

The feature vector of a patch (:func:`summary_features`) is the log of the auto spectra, the
cross-correlation coefficients ``r_ij = C_ij / sqrt(C_ii C_jj)`` (cross spectra can be negative,
so no log; together with the autos they carry exactly the cross spectra), and the peak and
minimum counts. The regressor (:func:`fit_summary_regressor`) standardises the features with
train-split statistics and predicts the standardised (Om, s8) of :class:`cosmo_sop.data.LabelScaler`:
either a small MLP trained by full-batch AdamW with early stopping on the validation split, or
ridge regression (closed form, its penalty chosen on the validation split) for comparison.

:func:`run_summary_statistics` does it all for a patch store, chunk by chunk, and writes the
test mean-squared errors (JSON) and the test predictions (``.npz``, for the predicted-vs-true
scatter plot).

The flat-sky binned spectra and the peak counts are written here with numpy/scipy because no
well-kept library computes them for a stack of small flat patches without heavy dependencies
(NaMaster or lenstools would pull in compiled stacks for a 20-line FFT and one scipy filter);
the regressor is a few lines of torch or numpy so that scikit-learn is not a dependency.
"""

from __future__ import annotations

import copy
import json
import math
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dask
import numpy as np
import scipy.fft
import torch
from scipy import ndimage
from scipy.signal.windows import tukey
from tqdm.auto import tqdm
from tqdm.dask import TqdmCallback

from cosmo_sop import __version__
from cosmo_sop.errors import InputError
from cosmo_sop.noise import smooth_patches
from cosmo_sop.storage import atomic_path
from cosmo_sop.training.data import SPLITS, PatchData

ARCMIN = math.pi / (180.0 * 60.0)  # radians per arcminute

REGRESSORS = ("mlp", "ridge")

#: Options of the summary-statistics analysis and their defaults.
SUMMARY_DEFAULTS: dict[str, Any] = {
    "ell_bins": 10,  # log-spaced multipole bins between the fundamental and the Nyquist multipole
    "cross_spectra": True,  # also the cross spectra of all pairs of tomographic bins
    "apodisation": 0.25,  # Tukey window parameter: fraction of each axis inside the cosine taper
    "peak_smoothing_pixels": 1.0,  # Gaussian sigma (pixels) of the map the extrema are found on
    "snr_min": -3.0,  # height-bin edges of the peak/minimum histograms, in units of the
    "snr_max": 6.0,  #   train-split std of the smoothed maps of each bin
    "snr_step": 0.5,
    "minima": True,  # also count local minima
    "regressors": ["mlp", "ridge"],  # fitted and reported; the first is the main result
    "seed": 0,
    "hidden": [64, 64],  # MLP hidden layer widths
    "learning_rate": 3e-3,  # AdamW, full batch
    "weight_decay": 1e-3,
    "max_steps": 3000,
    "patience": 200,  # stop after this many steps without a lower validation loss
    "ridge_alphas": [1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0],  # penalties tried (per sample)
    "chunk_samples": None,  # maps per feature task (None: the store's Zarr chunks)
    "save_predictions": True,  # test predictions beside the JSON (same name, .npz)
    "progress": True,
}

_INT_KEYS = ("ell_bins", "seed", "max_steps", "patience")
_FLOAT_KEYS = (
    "apodisation",
    "peak_smoothing_pixels",
    "snr_min",
    "snr_max",
    "snr_step",
    "learning_rate",
    "weight_decay",
)
_BOOL_KEYS = ("cross_spectra", "minima", "save_predictions", "progress")


def resolve_summary_config(
    config: Mapping[str, Any] | None, where: str = "summary_statistics"
) -> dict[str, Any]:
    """The options with defaults filled in, checked.

    Raises
    ------
    InputError
        Naming ``where.<key>`` for an unknown key or a bad value.
    """
    config = dict(config or {})
    unknown = sorted(set(config) - set(SUMMARY_DEFAULTS))
    if unknown:
        raise InputError(f"{where}.{unknown[0]}", f"unknown option (known: {', '.join(SUMMARY_DEFAULTS)})")
    cfg = copy.deepcopy(SUMMARY_DEFAULTS) | config

    def bad(key: str, problem: str) -> InputError:
        return InputError(f"{where}.{key}", problem)

    for key in _INT_KEYS:
        if isinstance(cfg[key], bool) or not isinstance(cfg[key], int | np.integer):
            raise bad(key, f"must be an integer, got {cfg[key]!r}")
    for key in _FLOAT_KEYS:
        if isinstance(cfg[key], bool) or not isinstance(cfg[key], int | float) or not math.isfinite(cfg[key]):
            raise bad(key, f"must be a finite number, got {cfg[key]!r}")
    for key in _BOOL_KEYS:
        if not isinstance(cfg[key], bool):
            raise bad(key, f"must be true or false, got {cfg[key]!r}")
    if cfg["ell_bins"] < 1:
        raise bad("ell_bins", "must be >= 1")
    if not 0.0 <= cfg["apodisation"] <= 1.0:
        raise bad("apodisation", "must be in [0, 1] (Tukey window parameter)")
    if cfg["peak_smoothing_pixels"] < 0:
        raise bad("peak_smoothing_pixels", "must be >= 0")
    if cfg["snr_step"] <= 0 or cfg["snr_max"] <= cfg["snr_min"]:
        raise bad("snr_step", "need snr_step > 0 and snr_max > snr_min")
    if cfg["learning_rate"] <= 0 or cfg["weight_decay"] < 0:
        raise bad("learning_rate", "need learning_rate > 0 and weight_decay >= 0")
    if cfg["max_steps"] < 1 or cfg["patience"] < 1:
        raise bad("max_steps", "need max_steps >= 1 and patience >= 1")
    regressors = cfg["regressors"]
    if isinstance(regressors, str):
        regressors = [regressors]
    if not regressors or any(r not in REGRESSORS for r in regressors) or len(set(regressors)) < len(regressors):
        raise bad("regressors", f"must be distinct names from {REGRESSORS}, got {cfg['regressors']!r}")
    cfg["regressors"] = list(regressors)
    hidden = cfg["hidden"]
    if not isinstance(hidden, list | tuple) or any(
        isinstance(h, bool) or not isinstance(h, int) or h < 1 for h in hidden
    ):
        raise bad("hidden", f"must be a list of positive integers, got {hidden!r}")
    cfg["hidden"] = [int(h) for h in hidden]
    alphas = cfg["ridge_alphas"]
    if not isinstance(alphas, list | tuple) or not alphas or any(
        isinstance(a, bool) or not isinstance(a, int | float) or not a > 0 for a in alphas
    ):
        raise bad("ridge_alphas", f"must be a non-empty list of positive numbers, got {alphas!r}")
    cfg["ridge_alphas"] = [float(a) for a in alphas]
    chunk = cfg["chunk_samples"]
    if chunk is not None and (isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1):
        raise bad("chunk_samples", f"must be a positive integer or null, got {chunk!r}")
    return cfg


def snr_edges(cfg: Mapping[str, Any]) -> np.ndarray:
    """Height-bin edges of the peak histograms (units of the per-bin scale) from the options."""
    n = max(1, round((cfg["snr_max"] - cfg["snr_min"]) / cfg["snr_step"]))
    return np.linspace(cfg["snr_min"], cfg["snr_min"] + n * cfg["snr_step"], n + 1)


# --------------------------------------------------------------------------------------------
# Power spectra
# --------------------------------------------------------------------------------------------


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
class _ModeBinning:
    """Which rfft2 modes fall in which multipole bin, as a (modes, bins) averaging matrix."""

    average: np.ndarray  # (H * (W // 2 + 1), n_bins): weight of each mode in each bin's mean
    ell_effective: np.ndarray  # (n_bins,) mode-weighted mean multipole of each bin
    n_modes: np.ndarray  # (n_bins,) number of Fourier modes (full plane) in each bin


def _mode_binning(shape: tuple[int, int], pixel_arcmin: float, edges: np.ndarray) -> _ModeBinning:
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
    return _ModeBinning(average, ell_effective, n_modes)


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
    cross: bool = True,
    apodisation: float = 0.25,
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
        Measure the cross spectra of all pairs of bins too.
    apodisation
        Tukey window parameter (0: no taper).
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
    binning = _mode_binning((h, w), pixel_arcmin, np.asarray(ell_edges, dtype=np.float64))
    if np.any(binning.n_modes == 0):
        empty = np.flatnonzero(binning.n_modes == 0).tolist()
        raise ValueError(f"multipole bin(s) {empty} hold no Fourier mode of {h}x{w} patches; use fewer bins")
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
# Peak counts
# --------------------------------------------------------------------------------------------


def _neighbourhood(ndim: int) -> np.ndarray:
    """3x3 footprint without its centre over the last two axes, singleton over the others."""
    footprint = np.ones((1,) * (ndim - 2) + (3, 3), dtype=bool)
    footprint[(0,) * (ndim - 2) + (1, 1)] = False
    return footprint


def local_extrema(maps: np.ndarray, kind: str = "max") -> np.ndarray:
    """Strict local maxima (or minima) over the 8 neighbours, per map of a stack.

    Parameters
    ----------
    maps
        Shape ``(..., H, W)``; the filter never mixes maps or tomographic bins.
    kind
        ``"max"`` or ``"min"``.

    Returns
    -------
    ndarray of bool, same shape
        True where the pixel is strictly above (below) all 8 neighbours. Border pixels, whose
        neighbourhood is incomplete, are never extrema; ties (plateaus) are not extrema.
    """
    maps = np.asarray(maps)
    footprint = _neighbourhood(maps.ndim)
    if kind == "max":
        extreme = maps > ndimage.maximum_filter(maps, footprint=footprint, mode="nearest")
    elif kind == "min":
        extreme = maps < ndimage.minimum_filter(maps, footprint=footprint, mode="nearest")
    else:
        raise ValueError(f"kind must be 'max' or 'min', got {kind!r}")
    extreme[..., 0, :] = extreme[..., -1, :] = False
    extreme[..., :, 0] = extreme[..., :, -1] = False
    return extreme


def peak_counts(
    patches: np.ndarray,
    edges: np.ndarray,
    scale: np.ndarray,
    *,
    smoothing_pixels: float = 0.0,
    kind: str = "max",
) -> np.ndarray:
    """Histograms of the heights of local maxima (or minima), per patch and tomographic bin.

    Parameters
    ----------
    patches
        Maps of shape ``(N, C, H, W)``.
    edges
        Height-bin edges in units of ``scale``, shape ``(K + 1,)``, increasing. The first and
        last bins are open-ended: they also count extrema below ``edges[0]`` / above ``edges[-1]``.
    scale
        Per-bin unit of height, shape ``(C,)`` (same units as the maps), e.g. the train-split
        standard deviation of the smoothed maps.
    smoothing_pixels
        Gaussian sigma, in pixels, of the smoothing applied before finding extrema.
    kind
        ``"max"`` (peaks) or ``"min"`` (minima).

    Returns
    -------
    ndarray, shape (N, C, K)
        Number of extrema in each height bin (float64).
    """
    patches = np.asarray(patches)
    if patches.ndim != 4:
        raise ValueError(f"patches must have shape (N, C, H, W), got {patches.shape}")
    n, c = patches.shape[:2]
    scale = np.asarray(scale, dtype=np.float64)
    if scale.shape != (c,) or not np.all(scale > 0):
        raise ValueError(f"scale must be {c} positive numbers, got {scale}")
    edges = np.asarray(edges, dtype=np.float64)
    k = edges.size - 1
    smoothed = smooth_patches(patches, smoothing_pixels)
    where = local_extrema(smoothed, kind)
    sample, channel, y, x = np.nonzero(where)
    height = smoothed[sample, channel, y, x] / scale[channel]
    # Interior edges only: everything below edges[1] goes to bin 0, above edges[-2] to bin K-1.
    height_bin = np.searchsorted(edges[1:-1], height, side="right")
    flat = (sample * c + channel) * k + height_bin
    return np.bincount(flat, minlength=n * c * k).reshape(n, c, k).astype(np.float64)


# --------------------------------------------------------------------------------------------
# Feature vectors
# --------------------------------------------------------------------------------------------


def summary_features(
    patches: np.ndarray,
    pixel_arcmin: float,
    peak_scale: np.ndarray,
    config: Mapping[str, Any] | None = None,
    *,
    workers: int = 1,
) -> np.ndarray:
    """The summary-statistics feature vector of each patch, shape ``(N, F)`` (float64).

    Columns, in the order of :func:`feature_names`: log auto spectra and cross-correlation
    coefficients (:func:`spectrum_features`), then peak counts, then (``minima``) minimum counts.

    Parameters
    ----------
    patches
        ``(N, C, H, W)`` kappa maps.
    pixel_arcmin
        Pixel side in arcminutes.
    peak_scale
        Per-bin unit of the extremum heights, ``(C,)`` (see :func:`peak_counts`).
    config
        Options (see :data:`SUMMARY_DEFAULTS`).
    """
    cfg = resolve_summary_config(config)
    patches = np.asarray(patches)
    edges = ell_bin_edges(patches.shape[-2:], pixel_arcmin, cfg["ell_bins"])
    spectra, _, pairs = power_spectra(
        patches,
        pixel_arcmin,
        edges,
        cross=cfg["cross_spectra"],
        apodisation=cfg["apodisation"],
        workers=workers,
    )
    parts = [spectrum_features(spectra, pairs)]
    kinds = ["max", "min"] if cfg["minima"] else ["max"]
    for kind in kinds:
        counts = peak_counts(
            patches, snr_edges(cfg), peak_scale, smoothing_pixels=cfg["peak_smoothing_pixels"], kind=kind
        )
        parts.append(counts.reshape(counts.shape[0], -1))
    return np.concatenate(parts, axis=1)


def feature_names(bins: Sequence[int], config: Mapping[str, Any] | None = None) -> list[str]:
    """Names of the columns of :func:`summary_features` for tomographic ``bins`` (1-based labels).

    ``logCl_<i>x<i>_l<b>``, ``r_<i>x<j>_l<b>``, ``peaks_<i>_nu<b>``, ``minima_<i>_nu<b>``, with
    multipole and height bins ``b`` counted from 0.
    """
    cfg = resolve_summary_config(config)
    bins = list(bins)
    names = []
    for i, j in spectrum_pairs(len(bins), cfg["cross_spectra"]):
        stem = f"logCl_{bins[i]}x{bins[j]}" if i == j else f"r_{bins[i]}x{bins[j]}"
        names += [f"{stem}_l{b}" for b in range(cfg["ell_bins"])]
    n_snr = snr_edges(cfg).size - 1
    for kind in ["peaks", "minima"] if cfg["minima"] else ["peaks"]:
        names += [f"{kind}_{b}_nu{k}" for b in bins for k in range(n_snr)]
    return names


# --------------------------------------------------------------------------------------------
# Regressors
# --------------------------------------------------------------------------------------------


@dataclass
class SummaryRegressor:
    """A fitted map from summary statistics to standardised targets.

    Attributes
    ----------
    kind
        ``"mlp"`` or ``"ridge"``.
    feature_mean, feature_scale
        Train-split standardisation of the features, ``(F,)`` (scale 1 for constant columns).
    coefficients
        Ridge: ``(F + 1, n_outputs)``, intercept last. None for the MLP.
    network
        MLP: the trained torch module (eval mode, CPU, float64). None for ridge.
    info
        How it was fitted: chosen penalty or steps, best validation MSE, ...
    """

    kind: str
    feature_mean: np.ndarray
    feature_scale: np.ndarray
    coefficients: np.ndarray | None = None
    network: torch.nn.Module | None = None
    info: dict[str, Any] = field(default_factory=dict)

    def standardise(self, features: np.ndarray) -> np.ndarray:
        return (np.asarray(features, dtype=np.float64) - self.feature_mean) / self.feature_scale

    def predict(self, features: np.ndarray) -> np.ndarray:
        """Standardised targets predicted from ``features`` ``(N, F)``, shape ``(N, n_outputs)``."""
        x = self.standardise(features)
        if self.kind == "ridge":
            return x @ self.coefficients[:-1] + self.coefficients[-1]
        with torch.no_grad():
            return self.network(torch.from_numpy(x)).numpy()


def predict(regressor: SummaryRegressor, features: np.ndarray) -> np.ndarray:
    """Standardised targets predicted by ``regressor`` (see :meth:`SummaryRegressor.predict`)."""
    return regressor.predict(features)


def _mlp(n_in: int, hidden: Sequence[int], n_out: int) -> torch.nn.Sequential:
    layers: list[torch.nn.Module] = []
    for width in hidden:
        layers += [torch.nn.Linear(n_in, width), torch.nn.SiLU()]
        n_in = width
    layers.append(torch.nn.Linear(n_in, n_out))
    return torch.nn.Sequential(*layers).double()


def _fit_ridge(x_train, y_train, x_val, y_val, alphas: Sequence[float]) -> tuple[np.ndarray, dict[str, Any]]:
    """Ridge on standardised features; the penalty with the lowest validation MSE wins.

    One eigendecomposition of the (F x F) Gram matrix of the centred design serves every
    penalty: ``w = V diag(1 / (lambda + a n)) V^T X^T y`` (an SVD of the N x F design gives the
    same but takes ten times longer). Penalties are per sample (``a n``), so they mean the same
    whatever the train-split size; the standardised features keep the Gram matrix well
    conditioned enough for the smallest penalties in float64.
    """
    n = x_train.shape[0]
    x_mean, y_mean = x_train.mean(axis=0), y_train.mean(axis=0)
    centred = x_train - x_mean
    eigenvalues, eigenvectors = np.linalg.eigh(centred.T @ centred)
    projected = eigenvectors.T @ (centred.T @ (y_train - y_mean))
    best: tuple[float, float, np.ndarray] | None = None
    val_mse = {}
    for alpha in alphas:
        weights = eigenvectors @ (projected / (np.maximum(eigenvalues, 0.0) + alpha * n)[:, None])
        intercept = y_mean - x_mean @ weights
        mse = float(np.mean((x_val @ weights + intercept - y_val) ** 2))
        val_mse[alpha] = mse
        if best is None or mse < best[1]:
            best = (alpha, mse, np.vstack([weights, intercept]))
    alpha, mse, coefficients = best
    info = {"alpha": alpha, "val_mse": mse, "val_mse_per_alpha": {str(a): m for a, m in val_mse.items()}}
    return coefficients, info


def _fit_mlp(
    x_train, y_train, x_val, y_val, seed: int, cfg: Mapping[str, Any]
) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Full-batch AdamW on the MSE, keeping the weights of the lowest validation loss.

    Full batches make the fit deterministic given the seed (which only sets the initial
    weights); float64 keeps it reproducible to the last bit on one machine.
    """
    with torch.random.fork_rng(devices=[]):  # seed the initialisation without touching global state
        torch.manual_seed(seed)
        network = _mlp(x_train.shape[1], cfg["hidden"], y_train.shape[1])
    xt, yt = torch.from_numpy(x_train), torch.from_numpy(y_train)
    xv, yv = torch.from_numpy(x_val), torch.from_numpy(y_val)
    parameters = list(network.parameters())
    optimiser = torch.optim.AdamW(parameters, lr=cfg["learning_rate"], weight_decay=cfg["weight_decay"])
    best_loss, best_step, best = math.inf, 0, [p.detach().clone() for p in parameters]
    steps = tqdm(
        range(1, cfg["max_steps"] + 1), desc="fit MLP", unit="step", leave=False, disable=not cfg["progress"]
    )
    # One thread: these matrices are small, and extra threads only contend with other work
    # (ten times slower on a busy 2-core machine).
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for step in steps:
            optimiser.zero_grad()
            loss = torch.mean((network(xt) - yt) ** 2)
            loss.backward()
            optimiser.step()
            with torch.no_grad():
                val_loss = float(torch.mean((network(xv) - yv) ** 2))
                if val_loss < best_loss:
                    best_loss, best_step = val_loss, step
                    for saved, p in zip(best, parameters, strict=True):
                        saved.copy_(p)
            if step - best_step >= cfg["patience"]:
                break
    finally:
        torch.set_num_threads(previous_threads)
    with torch.no_grad():
        for saved, p in zip(best, parameters, strict=True):
            p.copy_(saved)
    network.eval()
    return network, {"best_step": best_step, "steps": step, "val_mse": best_loss}


def fit_summary_regressor(
    features_train: np.ndarray,
    y_train: np.ndarray,
    features_val: np.ndarray,
    y_val: np.ndarray,
    seed: int = 0,
    *,
    kind: str = "mlp",
    config: Mapping[str, Any] | None = None,
) -> SummaryRegressor:
    """Fit a regressor from summary statistics to (standardised) targets.

    Parameters
    ----------
    features_train, features_val
        ``(N, F)`` feature vectors of the train and validation splits.
    y_train, y_val
        ``(N, n_outputs)`` targets (standardised, e.g. by :class:`cosmo_sop.data.LabelScaler`).
    seed
        Seed of the MLP's initial weights (ridge is deterministic).
    kind
        ``"mlp"``: MLP with early stopping on the validation MSE; ``"ridge"``: closed-form ridge
        regression, the penalty chosen on the validation MSE.
    config
        Options (see :data:`SUMMARY_DEFAULTS`: ``hidden``, ``learning_rate``, ``weight_decay``,
        ``max_steps``, ``patience``, ``ridge_alphas``, ``progress``).
    """
    cfg = resolve_summary_config(config)
    if kind not in REGRESSORS:
        raise ValueError(f"kind must be one of {REGRESSORS}, got {kind!r}")
    arrays = [np.asarray(a, dtype=np.float64) for a in (features_train, y_train, features_val, y_val)]
    x_train, y_train, x_val, y_val = arrays
    if (
        x_train.ndim != 2 or x_val.ndim != 2 or y_train.ndim != 2 or y_val.ndim != 2
        or x_train.shape[0] != y_train.shape[0] or x_val.shape[0] != y_val.shape[0]
        or x_train.shape[1] != x_val.shape[1] or y_train.shape[1] != y_val.shape[1]
        or x_train.shape[0] < 2 or x_val.shape[0] < 1
    ):
        raise ValueError(
            f"need features (N, F) and targets (N, n) for train and val, got {[a.shape for a in arrays]}"
        )
    if not all(np.all(np.isfinite(a)) for a in arrays):
        raise ValueError("features and targets must be finite")
    mean = x_train.mean(axis=0)
    scale = x_train.std(axis=0)
    scale[scale == 0] = 1.0  # constant columns (e.g. empty height bins) stay constant zeros
    regressor = SummaryRegressor(kind, mean, scale)
    xs_train, xs_val = regressor.standardise(x_train), regressor.standardise(x_val)
    if kind == "ridge":
        regressor.coefficients, regressor.info = _fit_ridge(
            xs_train, y_train, xs_val, y_val, cfg["ridge_alphas"]
        )
    else:
        regressor.network, regressor.info = _fit_mlp(xs_train, y_train, xs_val, y_val, int(seed), cfg)
    return regressor


# --------------------------------------------------------------------------------------------
# The analysis of a patch store
# --------------------------------------------------------------------------------------------


def _train_moments(block: np.ndarray, in_train: np.ndarray, smoothing: float) -> np.ndarray:
    """Per bin (count, mean, sum of squared deviations) of the smoothed train maps of a chunk."""
    maps = smooth_patches(block[in_train], smoothing).astype(np.float64)
    mean = maps.mean(axis=(0, 2, 3))
    squares = ((maps - mean[:, None, None]) ** 2).sum(axis=(0, 2, 3))
    return np.stack([np.full_like(mean, maps.size / maps.shape[1]), mean, squares])


def _pooled_std(moments: Sequence[np.ndarray]) -> np.ndarray:
    """Standard deviation from per-chunk (count, mean, M2) (Chan et al.'s pairwise update,
    which does not lose precision to cancellation as sum(x^2) - n mean^2 would)."""
    count, mean, m2 = moments[0]
    for other in moments[1:]:
        n_b, mean_b, m2_b = other
        total = count + n_b
        delta = mean_b - mean
        mean = mean + delta * n_b / total
        m2 = m2 + m2_b + delta**2 * count * n_b / total
        count = total
    return np.sqrt(m2 / count)


def _chunk_tasks(data: PatchData, chunk_samples: int | None) -> tuple[Any, list[tuple[int, int]]]:
    kappa = data.ds["kappa"].data
    if chunk_samples is not None:
        kappa = kappa.rechunk({0: chunk_samples})
    starts = np.cumsum((0, *kappa.chunks[0]))
    return kappa.to_delayed().ravel(), list(zip(starts[:-1].tolist(), starts[1:].tolist(), strict=True))


def _mse(pred: np.ndarray, true: np.ndarray, names: Sequence[str]) -> dict[str, float]:
    return dict(zip(names, ((pred - true) ** 2).mean(axis=0).tolist(), strict=True))


def run_summary_statistics(
    patches_store: str | os.PathLike,
    output_json: str | os.PathLike,
    config: Mapping[str, Any] | None = None,
    workers: int = 1,
) -> dict[str, Any]:
    """Summary statistics of a patch store, regressed to (Om, s8); test errors to JSON.

    The features of every map are computed chunk by chunk (dask, ``workers`` threads), the
    regressors of ``config["regressors"]`` are fitted on the train split with early stopping /
    penalty choice on the val split, and evaluated on the test split.

    Parameters
    ----------
    patches_store
        Zarr patch store (``kappa(sample, bin, y, x)``, split by cosmology).
    output_json
        Result file, written atomically: per regressor ``mse_standardised`` and ``mse``
        (physical units) per target on the test split, ``n_maps`` per split, the options, the
        multipole and height bins, the peak scale, timings and the store's provenance.
    config
        Options (see :data:`SUMMARY_DEFAULTS`).
    workers
        Threads for the feature computation.

    Returns
    -------
    dict
        The JSON content. With ``save_predictions``, ``output_json`` with suffix ``.npz`` holds
        ``names``, ``sample`` (test store indices), ``true`` and ``predicted_<regressor>``
        ``(n_test, n_targets)`` in physical units.

    Raises
    ------
    InputError
        For a missing or malformed store, bad options, or maps whose statistics are not finite.
    """
    cfg = resolve_summary_config(config)
    output_json = Path(output_json)
    if cfg["save_predictions"] and output_json.suffix == ".npz":
        raise InputError(output_json, "must not end in .npz (the predictions go to <name>.npz)")
    store = Path(patches_store)
    data = PatchData(store)
    scaler = data.scaler()
    split_index = {split: data.indices(split) for split in SPLITS}
    try:
        pixel_arcmin = float(data.ds.attrs["pixel_scale_arcmin"])
    except (KeyError, TypeError, ValueError):
        raise InputError(store, "attribute 'pixel_scale_arcmin' is missing or not a number") from None
    if not pixel_arcmin > 0:
        raise InputError(store, f"attribute 'pixel_scale_arcmin' must be > 0, got {pixel_arcmin}")
    shape = (int(data.ds.sizes["y"]), int(data.ds.sizes["x"]))
    if "bin" in data.ds.coords:
        bins = [int(b) for b in np.asarray(data.ds["bin"].values)]
    else:  # the contract has 1-based bin labels; number the channels so without them
        bins = list(range(1, data.ds.sizes["bin"] + 1))
    ell_edges = ell_bin_edges(shape, pixel_arcmin, cfg["ell_bins"])
    binning = _mode_binning(shape, pixel_arcmin, ell_edges)
    if np.any(binning.n_modes == 0):
        raise InputError(
            "summary_statistics.ell_bins",
            f"{cfg['ell_bins']} bins leave a multipole bin without Fourier modes of {shape[0]}x{shape[1]} patches",
        )
    blocks, ranges = _chunk_tasks(data, cfg["chunk_samples"])
    is_train = data.split_labels == "train"
    scheduler = {"scheduler": "threads", "num_workers": max(1, int(workers))}

    # Pass 1: the global height unit of each bin, from the smoothed train maps.
    t0 = time.perf_counter()
    tasks = [
        dask.delayed(_train_moments)(block, is_train[a:b], cfg["peak_smoothing_pixels"])
        for block, (a, b) in zip(blocks, ranges, strict=True)
        if is_train[a:b].any()
    ]
    with TqdmCallback(desc="peak scale (train)", leave=False, disable=not cfg["progress"]):
        peak_scale = _pooled_std(dask.compute(*tasks, **scheduler))
    if not np.all(np.isfinite(peak_scale)) or not np.all(peak_scale > 0):
        raise InputError(
            store, f"train maps have a constant or non-finite bin (std per bin {peak_scale.tolist()})"
        )
    t1 = time.perf_counter()

    # Pass 2: the feature vectors of all maps.
    feature_cfg = dict(cfg)
    tasks = [
        dask.delayed(summary_features)(block, pixel_arcmin, peak_scale, feature_cfg) for block in blocks
    ]
    progress = TqdmCallback(
        desc=f"summary statistics of {data.n_samples} maps", leave=False, disable=not cfg["progress"]
    )
    with progress:
        features = np.concatenate(dask.compute(*tasks, **scheduler), axis=0)
    t2 = time.perf_counter()
    bad = np.flatnonzero(~np.all(np.isfinite(features), axis=1))
    if bad.size:
        raise InputError(
            store,
            f"{bad.size} map(s) have non-finite summary statistics (zero power or NaN pixels), "
            f"first sample {int(bad[0])}",
        )

    names = list(scaler.names)
    y = {split: np.asarray(scaler.transform(data.labels[idx])) for split, idx in split_index.items()}
    x = {split: features[idx] for split, idx in split_index.items()}
    true_test = data.labels[split_index["test"]]
    results: dict[str, Any] = {}
    predictions: dict[str, np.ndarray] = {}
    fit_seconds = {}
    for kind in cfg["regressors"]:
        t = time.perf_counter()
        regressor = fit_summary_regressor(
            x["train"], y["train"], x["val"], y["val"], cfg["seed"], kind=kind, config=cfg
        )
        fit_seconds[kind] = time.perf_counter() - t
        pred = regressor.predict(x["test"])
        pred_physical = np.asarray(scaler.inverse_transform(pred))
        predictions[kind] = pred_physical
        results[kind] = {
            "mse_standardised": _mse(pred, y["test"], names),
            "mse": _mse(pred_physical, true_test, names),
            "fit": regressor.info,
        }

    result: dict[str, Any] = {
        "regressor": cfg["regressors"][0],
        "mse_standardised": results[cfg["regressors"][0]]["mse_standardised"],
        "mse": results[cfg["regressors"][0]]["mse"],
        "regressors": results,
        "targets": names,
        "n_maps": {split: int(idx.size) for split, idx in split_index.items()},
        "n_features": int(features.shape[1]),
        "feature_names": feature_names(bins, cfg),
        "ell_edges": ell_edges.tolist(),
        "ell_effective": binning.ell_effective.tolist(),
        "snr_edges": snr_edges(cfg).tolist(),
        "peak_scale": dict(zip([str(b) for b in bins], peak_scale.tolist(), strict=True)),
        "label_scaler": scaler.state_dict(),
        "config": cfg,
        "timing_s": {
            "peak_scale": t1 - t0,
            "features": t2 - t1,
            "features_per_1000_maps": (t2 - t1) * 1000 / data.n_samples,
            "fit": fit_seconds,
            "workers": int(workers),
        },
        "provenance": data.provenance(),
        "cosmo_sop_version": __version__,
    }
    if cfg["save_predictions"]:
        with atomic_path(output_json.with_suffix(".npz")) as tmp, open(tmp, "wb") as handle:
            # A file handle, because np.savez would append ".npz" to the temporary name.
            np.savez(
                handle,
                names=np.asarray(names),
                sample=split_index["test"],
                true=true_test,
                **{f"predicted_{kind}": pred for kind, pred in predictions.items()},
            )
        result["predictions"] = str(output_json.with_suffix(".npz"))
    with atomic_path(output_json) as tmp:
        tmp.write_text(json.dumps(result, indent=2, default=_json_default) + "\n")
    return result


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
