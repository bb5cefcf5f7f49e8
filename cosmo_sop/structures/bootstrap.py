"""The bootstrap of cosmo-sop's structure statistics: resample maps, or whole blocks of maps.

Groups of one map are correlated (their weights sum to one), and so are the patches of one
simulation, so intervals come from resampling whole maps (:func:`bootstrap_sums`), or blocks of
maps such as those of one cosmology, and taking percentiles of the replicates
(:func:`interval`).
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from cosmo_sop.errors import InputError
from cosmo_sop.structures.definitions import is_finite_number

#: Bootstrap replicates per block of the resampling-count matrix (bounds its memory).
REPLICATES_PER_BLOCK = 200


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
    """Bootstrap replicates of column sums over maps, resampling maps (or blocks) with replacement.

    Parameters
    ----------
    per_map
        Shape (N, ...): one row per map, e.g. the sum and the count of a class's weights.
    n_boot
        Number of replicates.
    seed
        Seed of ``np.random.default_rng``; the same seed gives the same replicates.
    blocks
        Optional label per map (N,), e.g. the cosmology: whole blocks are resampled (a block
        bootstrap), so correlated maps (patches of one simulation) stay together.

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
    codes = block_codes(blocks, n)
    n_blocks = int(codes.max()) + 1
    per_block = np.zeros((n_blocks, per_map[0].size))
    np.add.at(per_block, codes, per_map.reshape(n, -1))
    rng = np.random.default_rng(seed)
    out = np.empty((int(n_boot), per_block.shape[1]))
    # Each replicate is a vector of draw counts per block (multinomial), so the sums of many
    # replicates are one matrix product; replicates go in batches only to bound memory.
    for start in range(0, int(n_boot), REPLICATES_PER_BLOCK):
        stop = min(start + REPLICATES_PER_BLOCK, int(n_boot))
        counts = rng.multinomial(n_blocks, np.full(n_blocks, 1.0 / n_blocks), size=stop - start)
        out[start:stop] = counts @ per_block
    return out.reshape(int(n_boot), *per_map.shape[1:])


def interval(replicates: np.ndarray, confidence: float) -> tuple[np.ndarray, np.ndarray]:
    """Percentile interval over axis 0, ignoring replicates where the statistic is undefined."""
    tail = (1.0 - confidence) / 2.0
    # "inverted_cdf" takes order statistics without interpolating, so an infinite ratio (a
    # replicate without weight for the denominator) stays a plain large value.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "All-NaN slice", RuntimeWarning)  # empty class: NaN
        lo, hi = np.nanquantile(replicates, [tail, 1.0 - tail], axis=0, method="inverted_cdf")
    return lo, hi


def check_confidence(confidence: float) -> float:
    """The two-sided level of an interval as a float in (0, 1), or InputError."""
    if not is_finite_number(confidence) or not 0.0 < confidence < 1.0:
        raise InputError("argument 'confidence'", f"must be in (0, 1), got {confidence!r}")
    return float(confidence)
