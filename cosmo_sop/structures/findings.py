"""Findings: the verdicts whose weight ratio stands apart from every null control's.

:func:`~cosmo_sop.structures.verdict` says whether a class's Om/s8 weight ratio lies on the
paper's side of 1. That is not yet evidence that training taught SOP anything: the nulls of
:mod:`~cosmo_sop.structures.nulls` (the SOP at initialisation, uniform scores over the trained
groups, random groups scored by the trained selector) may give the same ratio. :func:`with_nulls`
adds the nulls' ratios to each verdict record and decides whether it is a *finding*.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import xarray as xr

from cosmo_sop.storage import finite_or_none

#: Outcomes of :func:`~cosmo_sop.structures.verdict` that can be findings: those that say
#: something about the paper, either way.
DECIDED = ("agrees", "disagrees")


def _bounds(table: xr.Dataset, definition: str) -> tuple[float, float, float, int]:
    """The ratio, its interval and the class's groups (the fewer of the two outputs')."""
    row = table.sel(definition=definition)
    ratio, low, high = (float(row[k]) for k in ("ratio", "ratio_low", "ratio_high"))
    return ratio, low, high, int(row["n_groups"].values.min())


def beyond(low: float, high: float, null_low: float, null_high: float, side: int) -> bool:
    """True where [low, high] lies wholly past the null's [null_low, null_high] on ``side``.

    ``side`` +1: above it (``low > null_high``); -1: below it (``high < null_low``); the side
    is that of the trained SOP's ratio relative to 1, so a null that weighs the class *more*
    one-sidedly than SOP (e.g. random groups at 1.24 against SOP's 1.001) never lets SOP's
    ratio count as a finding. An undefined (NaN) bound is never beyond; an infinite bound is a
    plain bound (``[2, inf]`` lies above ``[0.5, 1.5]``).
    """
    bounds = np.array([low, high, null_low, null_high], dtype=np.float64)
    if np.isnan(bounds).any() or side == 0:
        return False
    return bool(low > null_high) if side > 0 else bool(high < null_low)


def with_nulls(
    record: Mapping[str, Any], table: xr.Dataset, nulls: Mapping[str, xr.Dataset]
) -> dict[str, Any]:
    """A verdict record with the nulls' ratios and the finding flag.

    The rule
    --------
    A verdict is a *finding* if and only if (1) its outcome is ``"agrees"`` or ``"disagrees"``
    (the trained SOP's ratio interval excludes 1) and (2) for **every** null computed, the null
    has a defined ratio interval for the same class and the trained SOP's interval lies wholly
    beyond it, on the side of 1 SOP's ratio is on (ratio > 1: ``sop.low > null.high``; ratio
    < 1: ``sop.high < null.low``): training must have moved the ratio further from 1 than
    every null, not merely elsewhere. Intervals are the percentile
    intervals of the same cosmology bootstrap (same seed: the same resampled cosmologies for the
    SOP and every null). A null whose class is empty or whose ratio is undefined makes the
    verdict no finding (nothing to tell it apart from). Without nulls, ``finding`` is None (not
    assessed).

    Parameters
    ----------
    record
        From :func:`~cosmo_sop.structures.verdict` on ``table``.
    table
        The trained SOP's :func:`~cosmo_sop.structures.weight_table`.
    nulls
        Null name -> its weight table (same definitions, maps, bootstrap settings).

    Returns
    -------
    dict
        ``record`` (every field kept) with ``nulls``: name -> ``ratio``, ``ci_low``,
        ``ci_high`` (None where not finite), ``n_groups``, ``excluded`` (the trained SOP's
        interval lies beyond this null's, see the rule); and ``finding`` (True / False / None).
    """
    definition = str(record["definition"])
    ratio, low, high, _ = _bounds(table, definition)
    side = int(np.sign(ratio - 1.0)) if np.isfinite(ratio) else 0
    compared: dict[str, dict[str, Any]] = {}
    for name, null_table in nulls.items():
        ratio, null_low, null_high, n_groups = _bounds(null_table, definition)
        compared[name] = {
            "ratio": finite_or_none(ratio),
            "ci_low": finite_or_none(null_low),
            "ci_high": finite_or_none(null_high),
            "n_groups": n_groups,
            "excluded": n_groups > 0 and beyond(low, high, null_low, null_high, side),
        }
    finding = None
    if compared:
        finding = record["outcome"] in DECIDED and all(c["excluded"] for c in compared.values())
    return {**record, "nulls": compared, "finding": finding}
