"""The bootstrap of cosmo-sop's structure statistics: resample whole cosmologies (or maps).

Groups of one map are correlated (their weights sum to one), and so are the patches of one
cosmology, so intervals come from resampling whole blocks of maps, by default the cosmologies
(config ``structures.bootstrap_blocks: cosmology``), and taking percentiles of the replicates
(:func:`interval`). The draws are those of the shared cosmology bootstrap
(:func:`cosmo_sop.statistics.resample_counts`): the same block labels, ``n_boot`` and seed give
the same resamples in every stage, so the trained SOP and its null controls, weighed on the same
maps with the same seed, are resampled together (paired).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from cosmo_sop.errors import InputError
from cosmo_sop.statistics import percentile_interval, replicate_sums, resample_counts
from cosmo_sop.structures.definitions import is_finite_number


def block_codes(blocks: Any, n: int) -> np.ndarray:
    """Integer codes 0..B-1 of the resampling block of every map (default: each map its own)."""
    if blocks is None:
        return np.arange(n)
    blocks = np.asarray(blocks)
    if blocks.shape != (n,):
        raise InputError(
            "argument 'blocks'", f"must have one entry per map ({n}), got {blocks.shape}"
        )
    return np.unique(blocks, return_inverse=True)[1].reshape(n)


def bootstrap_sums(per_map: np.ndarray, n_boot: int, seed: int, blocks: Any = None) -> np.ndarray:
    """Bootstrap replicates of column sums over maps, resampling blocks of maps with replacement.

    Parameters
    ----------
    per_map
        Shape (N, ...): one row per map, e.g. the sum and the count of a class's weights.
    n_boot
        Number of replicates.
    seed
        Seed of the draws (:func:`cosmo_sop.statistics.resample_counts`); the same seed and
        blocks give the same replicates.
    blocks
        Label per map (N,), e.g. its cosmology: whole blocks are resampled (a block bootstrap),
        so correlated maps stay together. None: every map its own block.

    Returns
    -------
    ndarray
        Shape (n_boot, ...): for each replicate, the sum over the drawn maps.
    """
    per_map = np.asarray(per_map, dtype=np.float64)
    n = per_map.shape[0]
    if n == 0:
        raise InputError("bootstrap", "no maps to resample")
    if int(n_boot) < 1:
        raise InputError("argument 'n_boot'", f"must be >= 1, got {n_boot}")
    labels = block_codes(blocks, n)
    counts = resample_counts(labels, int(n_boot), seed)
    return replicate_sums(per_map, labels, counts)


def interval(replicates: np.ndarray, confidence: float) -> tuple[np.ndarray, np.ndarray]:
    """Percentile interval over axis 0, ignoring replicates where the statistic is undefined
    (:func:`cosmo_sop.statistics.percentile_interval`: order statistics, no interpolation, so
    an infinite ratio stays a plain large value)."""
    return percentile_interval(replicates, confidence)


def check_confidence(confidence: float) -> float:
    """The two-sided level of an interval as a float in (0, 1), or InputError."""
    if not is_finite_number(confidence) or not 0.0 < confidence < 1.0:
        raise InputError("argument 'confidence'", f"must be in (0, 1), got {confidence!r}")
    return float(confidence)
