"""Findings: paired tests of the trained SOP's weight ratios against the null controls.

:func:`~cosmo_sop.structures.verdict` says whether a class's Om/s8 weight ratio lies on the
paper's side of 1. Whether training taught SOP that is a question for the nulls of
:mod:`~cosmo_sop.structures.nulls`, which are weighed on the same maps with the same cosmology
bootstrap draws, so every replicate of SOP's ratio has a replicate of each null's ratio on the
same resampled cosmologies. Two hypotheses per class, each with its own null:

``selector`` (null ``uniform``)
    Does the trained selector weigh the class differently for Om than for s8 at all? The null
    is the same groups with equal scores, whose ratio is exactly 1.
``groups`` (null ``random``)
    Do SOP's learnt groups sharpen the effect beyond random groups of the same sizes scored by
    the same trained selector?

The statistic of each is the per-replicate difference of the log ratios, ``log(SOP) -
log(null)`` (0: no difference; log, so that a ratio of 2 and one of 1/2 are equally far from
1); its one-sided bootstrap p-value (:func:`~cosmo_sop.statistics.one_sided_p_value`) is taken
on the side the paper predicts (voids: above, more weight for Om; clusters: below), and the
p-values of all tests of one run are adjusted by Holm's rule
(:func:`~cosmo_sop.statistics.holm`). A hypothesis is a *finding* where its adjusted p-value is
below 1 - confidence (0.05): the one-sided interval of the difference, widened for the number
of tests, excludes 0 on the predicted side. A test of two percentile intervals for overlap, as
before, ignores that both come from the same draws and is needlessly weak (about p < 0.006).

A null other than these two (``initial``, the SOP at initialisation) is tested the same way
and reported, but is no hypothesis of its own: with the default ``sop.selector_init: uniform``
its scores are uniform too.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import xarray as xr

from cosmo_sop.config import defaults
from cosmo_sop.statistics import holm, one_sided_p_value, percentile_interval
from cosmo_sop.storage import finite_or_none
from cosmo_sop.structures.definitions import PAPER_FINDINGS

#: Hypothesis -> its null: ``selector`` against uniform scores on the trained groups,
#: ``groups`` against random groups scored by the trained selector.
HYPOTHESES: dict[str, str] = {"selector": "uniform", "groups": "random"}

#: Outcomes of :func:`~cosmo_sop.structures.verdict` whose class is tested: those with enough
#: contributing cosmologies and a defined ratio.
TESTED_OUTCOMES = ("agrees", "disagrees", "inconclusive")


def predicted_side(kind: str | None, outputs: Sequence[str]) -> int:
    """+1 where the paper finds ``kind`` heavier for outputs[0] (the ratio's numerator), -1
    for outputs[1], 0 where it says nothing."""
    heavier = PAPER_FINDINGS.get(kind or "", {}).get("heavier")
    return {outputs[0]: 1, outputs[1]: -1}.get(heavier, 0)


def log_ratio_replicates(table: xr.Dataset, definition: str) -> np.ndarray:
    """The bootstrap replicates of ``log(ratio)`` of one class (B,), NaN where undefined; a
    ratio of 0 or infinity (one output's weight 0 in the replicate) gives -inf or inf."""
    replicates = table["ratio_replicates"].sel(definition=definition).values
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.log(replicates)


def paired_difference(
    table: xr.Dataset, null_table: xr.Dataset, definition: str, side: int, confidence: float
) -> dict[str, Any]:
    """The paired test of one class's log ratio, trained SOP minus a null, on ``side``.

    Parameters
    ----------
    table, null_table
        :func:`~cosmo_sop.structures.weight_table` of the trained SOP and of the null, made with
        the same bootstrap seed and blocks (their replicates pair up; checked).
    definition
        The class.
    side
        +1: the test asks whether SOP's ratio exceeds the null's; -1: whether it falls below.
    confidence
        Two-sided level of the reported interval of the difference.

    Returns
    -------
    dict
        ``difference`` (log ratio of SOP - of the null, on all maps), ``ci_low``, ``ci_high``
        (its percentile interval), ``p_value`` (one-sided, on ``side``), ``n_replicates``
        (replicates where both ratios are defined); numbers None where not finite.
    """
    for key in ("n_boot", "seed", "n_blocks", "n_maps"):
        if table.attrs[key] != null_table.attrs[key]:
            raise ValueError(
                f"paired test of {definition!r}: the tables differ in {key} "
                f"({table.attrs[key]} vs {null_table.attrs[key]}), so their replicates do not pair"
            )
    sop, null = (float(t["ratio"].sel(definition=definition)) for t in (table, null_table))
    with np.errstate(divide="ignore", invalid="ignore"):
        difference = np.log(sop) - np.log(null)
        replicates = log_ratio_replicates(table, definition) - log_ratio_replicates(
            null_table, definition
        )
    low, high = percentile_interval(replicates, confidence)
    return {
        "difference": finite_or_none(difference),
        "ci_low": finite_or_none(low),
        "ci_high": finite_or_none(high),
        "p_value": finite_or_none(one_sided_p_value(replicates, side)),
        "n_replicates": int((~np.isnan(replicates)).sum()),
    }


def _null_summary(null_table: xr.Dataset, definition: str) -> dict[str, Any]:
    row = null_table.sel(definition=definition)
    return {
        "ratio": finite_or_none(row["ratio"]),
        "ci_low": finite_or_none(row["ratio_low"]),
        "ci_high": finite_or_none(row["ratio_high"]),
        "n_groups": int(row["n_groups"].values.min()),
        "n_contributing": int(row["n_contributing"].values.min()),
    }


def _untested(record: Mapping[str, Any], side: int, null: Mapping[str, Any] | None) -> str | None:
    """Why a class is not tested against a null (None: it is)."""
    if side == 0:
        return "the paper predicts nothing for this kind"
    if record["outcome"] not in TESTED_OUTCOMES:
        return f"no verdict: {record['outcome']}"
    if null is None:
        return "null not computed"
    if null["ratio"] is None:
        return "the null's ratio is undefined (no groups of the class)"
    return None


def with_nulls(
    record: Mapping[str, Any],
    table: xr.Dataset,
    nulls: Mapping[str, xr.Dataset],
    min_blocks: int | None = None,
) -> dict[str, Any]:
    """A verdict record with its nulls and the paired test against each (p-values unadjusted;
    :func:`assess` adjusts them over a run and decides findings).

    Parameters
    ----------
    record
        From :func:`~cosmo_sop.structures.verdict` on ``table``.
    table
        The trained SOP's :func:`~cosmo_sop.structures.weight_table`.
    nulls
        Null name -> its weight table (same definitions, maps, bootstrap settings).
    min_blocks
        A null whose class lies in fewer cosmologies than this is not tested against; None:
        the schema's ``structures.min_blocks``.

    Returns
    -------
    dict
        ``record`` (every field kept) with ``predicted_side`` (+1: the paper expects a ratio
        above the null's, -1 below, 0 no expectation) and ``nulls``: name -> the null's
        ``ratio``, ``ci_low``, ``ci_high``, ``n_groups``, ``n_contributing`` and ``test``
        (:func:`paired_difference`, or ``{"untested": reason}``).
    """
    min_blocks = defaults("structures.min_blocks") if min_blocks is None else int(min_blocks)
    definition = str(record["definition"])
    outputs = [str(o) for o in table["output"].values]
    side = predicted_side(record.get("kind"), outputs)
    confidence = float(table.attrs["confidence"])
    compared: dict[str, dict[str, Any]] = {}
    for name, null_table in nulls.items():
        null = _null_summary(null_table, definition)
        reason = _untested(record, side, null)
        if reason is None and 0 < null["n_contributing"] < min_blocks:
            reason = f"the null's class lies in fewer than {min_blocks} cosmologies"
        null["test"] = (
            {"untested": reason}
            if reason
            else paired_difference(table, null_table, definition, side, confidence)
        )
        compared[name] = null
    return {**record, "predicted_side": side, "nulls": compared}


def assess(
    records: Sequence[Mapping[str, Any]],
    table: xr.Dataset,
    nulls: Mapping[str, xr.Dataset],
    min_blocks: int | None = None,
) -> list[dict[str, Any]]:
    """Every verdict record of a run with its nulls (:func:`with_nulls`) and its hypotheses.

    The p-values of all hypotheses tested in the run (every class, both hypotheses) are adjusted
    together by Holm's rule; a hypothesis is a finding where the adjusted p-value is below
    ``1 - confidence`` (the table's level).

    Returns
    -------
    list of dict
        The records with ``nulls`` and ``hypotheses``: name (:data:`HYPOTHESES`) -> ``null``,
        the null's test fields, ``p_adjusted`` and ``finding`` (True / False), or
        ``{"null": ..., "untested": reason, "finding": False}``; and ``finding``: the selector
        hypothesis's (None where its null was not computed, so nothing was assessed).
    """
    alpha = 1.0 - float(table.attrs["confidence"])
    out = [with_nulls(r, table, nulls, min_blocks) for r in records]
    tests = [
        (record, name, record["nulls"][null]["test"])
        for record in out
        for name, null in HYPOTHESES.items()
        if null in record["nulls"] and "p_value" in record["nulls"][null]["test"]
    ]
    p_values = [np.nan if t["p_value"] is None else t["p_value"] for _, _, t in tests]
    adjusted = holm(p_values) if tests else np.array([])
    for record in out:
        record["hypotheses"] = {
            name: {"null": null, "untested": "null not computed", "finding": False}
            if null not in record["nulls"]
            else {"null": null, **record["nulls"][null]["test"], "finding": False}
            for name, null in HYPOTHESES.items()
        }
    for (record, name, _), p in zip(tests, adjusted):
        hypothesis = record["hypotheses"][name]
        hypothesis["p_adjusted"] = finite_or_none(p)
        hypothesis["finding"] = bool(np.isfinite(p) and p < alpha)
    for record in out:
        assessed = HYPOTHESES["selector"] in record["nulls"]
        record["finding"] = record["hypotheses"]["selector"]["finding"] if assessed else None
    return out
