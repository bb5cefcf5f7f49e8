"""The train/val/test split of an ingest: by cosmology, reproducible from the master seed."""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence

import numpy as np

from cosmo_sop.errors import InputError

SPLITS = ("train", "val", "test")
#: Tag that derives the split's random stream from the master seed (other steps use others).
_SPLIT_STREAM = 1


def split_counts(n_cosmologies: int, fractions: Mapping[str, float]) -> dict[str, int]:
    """Number of cosmologies per split, summing to ``n_cosmologies``.

    Largest-remainder rounding of ``fraction * n``; then every split with a non-zero fraction
    gets at least one cosmology while enough cosmologies exist (taken from the largest split),
    so that a small demo still has a validation and a test set.

    Parameters
    ----------
    n_cosmologies
        Number of cosmologies to share out.
    fractions
        The ``ingest.split`` config section: a non-negative fraction per split name
        (normalised here; a missing split counts as 0).

    Returns
    -------
    dict
        Split name -> number of cosmologies, in the order of :data:`SPLITS`.

    Warns
    -----
    UserWarning
        If a split with a non-zero fraction stays empty (too few cosmologies).
    """
    weights = np.array([float(fractions.get(name, 0.0)) for name in SPLITS])
    if weights.min() < 0 or weights.sum() <= 0:
        raise InputError(
            "config key 'ingest.split'", f"needs non-negative fractions, got {weights.tolist()}"
        )
    exact = weights / weights.sum() * n_cosmologies
    counts = np.floor(exact).astype(int)
    by_remainder = np.argsort(-(exact - counts), kind="stable")
    counts[by_remainder[: n_cosmologies - counts.sum()]] += 1
    for k in np.argsort(-weights, kind="stable"):
        donor = int(np.argmax(counts))
        if weights[k] > 0 and counts[k] == 0 and counts[donor] > 1:
            counts[donor] -= 1
            counts[k] += 1
    empty = [name for name, w, c in zip(SPLITS, weights, counts, strict=True) if w > 0 and c == 0]
    if empty:
        warnings.warn(
            f"only {n_cosmologies} cosmolog{'y' if n_cosmologies == 1 else 'ies'}: "
            f"split(s) {', '.join(empty)} stay empty",
            stacklevel=2,
        )
    return dict(zip(SPLITS, counts.tolist(), strict=True))


def split_cosmologies(
    cosmologies: Sequence[str], fractions: Mapping[str, float], seed: int
) -> dict[str, str]:
    """Assign every cosmology to ``train``, ``val`` or ``test``.

    Splitting by cosmology (not by patch or permutation) keeps every view of one cosmology in
    one split, so validation and test measure generalisation to unseen parameters. The
    assignment depends only on the set of ids and the seed, not on their order.

    Parameters
    ----------
    cosmologies
        Cosmology ids (repeats allowed: one entry per map file).
    fractions
        The ``ingest.split`` config section (see :func:`split_counts`).
    seed
        Master seed.

    Returns
    -------
    dict
        Cosmology id -> split name.
    """
    ids = sorted(set(cosmologies))
    counts = split_counts(len(ids), fractions)
    shuffled = np.random.default_rng([seed, _SPLIT_STREAM]).permutation(len(ids))
    names = np.repeat(SPLITS, [counts[name] for name in SPLITS])
    return {ids[i]: str(name) for i, name in zip(shuffled, names, strict=True)}
