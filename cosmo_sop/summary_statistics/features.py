"""The summary-statistics feature vector of each patch: spectra, peak and minimum counts.

The classical route to (Om, s8), the baseline the CNN and Sum-of-Parts models are compared with:
a weak-lensing analysis compresses each map into a few hundred summary statistics
(:mod:`~cosmo_sop.summary_statistics.spectra`, :mod:`~cosmo_sop.summary_statistics.peaks`) and
learns the map from those to the cosmological parameters
(:mod:`~cosmo_sop.summary_statistics.regressor`, :mod:`~cosmo_sop.summary_statistics.run`).

The feature vector of a patch (:func:`summary_features`) is the log of the auto spectra, the
cross-correlation coefficients ``r_ij = C_ij / sqrt(C_ii C_jj)`` (cross spectra can be negative,
so no log; together with the autos they carry exactly the cross spectra), and the peak and
minimum counts.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from cosmo_sop.summary_statistics.options import resolve_summary_config
from cosmo_sop.summary_statistics.peaks import peak_counts, snr_edges
from cosmo_sop.summary_statistics.spectra import (
    ell_bin_edges,
    power_spectra,
    spectrum_features,
    spectrum_pairs,
)


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
        Options (the ``summary_statistics`` config section; see
        :func:`~cosmo_sop.summary_statistics.options.resolve_summary_config`).
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
            patches,
            snr_edges(cfg),
            peak_scale,
            smoothing_pixels=cfg["peak_smoothing_pixels"],
            kind=kind,
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
