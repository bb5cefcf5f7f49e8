"""The void/cluster verdicts in words: sentences and counts from the records of verdicts.json.

The structures step records each verdict as data (:func:`cosmo_sop.structures.verdict`: the
weight ratio, its interval, the outcome); the report alone turns them into sentences, and
counts outcomes from the records' ``outcome`` field, and sets each verdict beside its null
controls (:func:`null_rows`, :func:`finding_text`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from cosmo_sop.report.tables import number
from cosmo_sop.structures.definitions import PAPER_FINDINGS

#: How the report counts each outcome, in the order the counts are shown ("no_expectation" is
#: not counted: the paper says nothing to agree with).
COUNTED = {
    "disagrees": "disagree",
    "agrees": "agree",
    "inconclusive": "inconclusive",
    "no_groups": "no verdict",
    "too_few": "no verdict",
    "undefined": "no verdict",
}


def _g(value: float | None) -> str:
    """Three significant digits; a value the record could not give (None) reads as nan."""
    return f"{float('nan') if value is None else float(value):.3g}"


def _contributing(record: Mapping[str, Any], settings: Mapping[str, Any]) -> str:
    """``" in 12 cosmologies, 0.3 % of resamples without the class left out"``: what a class's
    interval rests on, where the record says (records before these fields: nothing)."""
    n, dropped = record.get("n_contributing"), record.get("dropped_replicates")
    if n is None:
        return ""
    units = (
        "cosmologies" if settings.get("bootstrap_blocks", "cosmology") == "cosmology" else "blocks"
    )
    text = f" in {n} {units}"
    if dropped:
        text += f", {100 * dropped:.2g} % of resamples without the class left out"
    return text


def _relative(record: Mapping[str, Any], outputs: Sequence[str]) -> str:
    """``"; 1.02x the average group's weight for Om, 0.55x for s8"``: which output's weights
    make the ratio (records before this field: nothing)."""
    relative = record.get("relative_weight") or {}
    values = [relative.get(o) for o in outputs[:2]]
    if any(v is None for v in values):
        return ""
    return (
        f"; {values[0]:.3g}× the average group's weight for {outputs[0]}, "
        f"{values[1]:.3g}× for {outputs[1]}"
    )


def group_pixels_note(content: Mapping[str, Any]) -> str | None:
    """The share of the pixels this run's groups hold and the bound it puts on their mean
    (``group_pixels`` of verdicts.json; None where it is not recorded)."""
    shares = content.get("group_pixels") or {}
    keys = ("p05", "p95", "bound_low", "bound_high")
    if any(shares.get(k) is None for k in keys):
        return None
    p05, p95, low, high = (float(shares[k]) for k in keys)
    return (
        f"Here SOP's groups hold {100 * p05:.3g}–{100 * p95:.3g} % of a map's pixels (5th to "
        f"95th percentile: they hold a share of the tokens, and tokens differ in size), so "
        f"their mean is at most {low:.3g}σ–{high:.3g}σ"
    )


def selector_note(content: Mapping[str, Any]) -> str | None:
    """How far SOP's selectors moved from uniform scores, per output, from the ``score_evenness``
    recorded in verdicts.json (None where it is not)."""
    groups = (content.get("weights") or {}).get("all_groups") or {}
    evenness = {o: v.get("score_evenness") for o, v in groups.items() if isinstance(v, Mapping)}
    if not evenness or any(v is None for v in evenness.values()):
        return None
    values = ", ".join(f"{o} {v:.3g}" for o, v in evenness.items())
    return (
        "How far the selectors moved from uniform scores: the evenness of each map's scores "
        f"(their entropy over the log of the number of groups; 1 = uniform) is {values}. "
        "A ratio made by one output's uneven weights says that output singles the class out "
        "(or leaves it out), not that the other does"
    )


def verdict_sentence(record: Mapping[str, Any], settings: Mapping[str, Any]) -> str:
    """One sentence on whether one class agrees with the SOP paper, with numbers.

    Parameters
    ----------
    record
        A verdict record of :func:`cosmo_sop.structures.verdict` (``definition``, ``kind``,
        ``rule``, ``n_groups``, ``ratio``, ``ci_low``, ``ci_high``, ``outcome``).
    settings
        What verdicts.json records beside the records: ``outputs`` (the two outputs of the
        ratio), ``confidence`` (of the interval, a fraction), ``n_maps``, ``n_blocks``.

    Returns
    -------
    str
        E.g. ``"voids 'void' (mean < 0σ): Om/s8 weight ratio 1.21 [1.05, 1.38] (95% CI, 100
        maps, 340 groups) — agrees with the paper (voids weigh more for Om)"``.
    """
    kind, definition = record.get("kind") or "", record["definition"]
    rule = record.get("rule") or "rule not recorded"
    head = f"{kind}s '{definition}' ({rule})" if kind else f"'{definition}' ({rule})"
    outputs = settings["outputs"]
    n_maps, n_blocks = settings["n_maps"], settings["n_blocks"]
    sample = f"{n_maps} maps" if n_blocks == n_maps else f"{n_maps} maps in {n_blocks} blocks"
    groups, outcome = record.get("n_groups"), record["outcome"]
    if outcome == "no_groups":
        return f"{head}: no groups in this class ({sample}) — no verdict"
    if outcome == "too_few":
        return (
            f"{head}: {groups} groups{_contributing(record, settings)} ({sample}); a verdict "
            f"needs at least {settings.get('min_blocks', 'structures.min_blocks')} — no verdict"
        )
    if outcome == "undefined":
        return (
            f"{head}: ratio undefined, zero mean weight for {outputs[1]} ({sample}, "
            f"{groups} groups) — no verdict"
        )
    level = f"{100 * settings['confidence']:g}% CI"
    low, high = record.get("ci_low"), record.get("ci_high")
    # JSON has no infinity: an upper bound recorded as null beside a finite lower bound was
    # infinite (a replicate gave the denominator no weight; the interval ignores only NaN).
    high_text = "inf" if high is None and low is not None else _g(high)
    interval = f"{_g(record.get('ratio'))} [{_g(low)}, {high_text}]"
    numbers = (
        f"{head}: {outputs[0]}/{outputs[1]} weight ratio {interval} ({level}, {sample}, "
        f"{groups} groups{_contributing(record, settings)}{_relative(record, outputs)})"
    )
    if outcome == "inconclusive":
        return f"{numbers} — inconclusive (CI includes 1)"
    if outcome == "agrees":
        return f"{numbers} — agrees with the paper ({PAPER_FINDINGS[kind]['text']})"
    if outcome == "disagrees":
        return f"{numbers} — disagrees with the paper (which finds {PAPER_FINDINGS[kind]['text']})"
    return f"{numbers} — no paper expectation for kind {kind!r}"


def verdict_summary(records: Iterable[Mapping[str, Any]]) -> dict[str, dict[str, int]]:
    """Per structure kind, how many verdict records agree, disagree, are inconclusive or give
    no verdict (keys in that order: ``"disagree"``, ``"agree"``, ``"inconclusive"``,
    ``"no verdict"``). Records without a kind, or whose outcome says nothing about the paper
    (``"no_expectation"``), are not counted."""
    shown = dict.fromkeys(COUNTED.values(), 0)
    counts: dict[str, dict[str, int]] = {}
    for record in records:
        kind, outcome = record.get("kind"), record.get("outcome")
        if not kind or outcome not in COUNTED:
            continue
        counts.setdefault(kind, dict(shown))[COUNTED[outcome]] += 1
    return counts


def agreement(counts: Mapping[str, Mapping[str, int]]) -> list[dict[str, Any]]:
    """Per kind of the paper's findings (voids, clusters): the output it finds heavier, the
    number of definitions, and the non-zero counts of :func:`verdict_summary`."""
    out = []
    for kind, finding in PAPER_FINDINGS.items():
        per_kind = counts.get(kind) or {}
        shown = {short: n for short, n in per_kind.items() if n}
        out.append(
            {
                "kind": kind,
                "heavier": finding["heavier"],
                "total": sum(per_kind.values()),
                "counts": shown,
            }
        )
    return out


def glance(counts: Mapping[str, Mapping[str, int]] | None) -> str | None:
    """The verdicts of one level in a table cell: ``"voids: 1 agree; clusters: 2 no verdict"``
    (None where the verdicts are not computed)."""
    if counts is None:
        return None
    parts = [
        f"{kind}s: " + ", ".join(f"{n} {short}" for short, n in counts[kind].items() if n)
        for kind in PAPER_FINDINGS
        if kind in counts
    ]
    return "; ".join(parts) or "no verdict"


def bootstrap_note(settings: Mapping[str, Any]) -> str:
    """How the intervals were made, from the settings recorded beside the verdicts."""
    parts = []
    n_maps = settings.get("n_maps")
    if n_maps is not None:
        blocks, kind = settings.get("n_blocks"), settings.get("bootstrap_blocks")
        if blocks is not None and blocks != n_maps:
            by = f" (by {kind})" if kind else ""
            parts.append(f"{number(n_maps)} maps resampled in {number(blocks)} blocks{by}")
        else:
            parts.append(f"{number(n_maps)} maps resampled one by one")
    if settings.get("n_boot") is not None:
        parts.append(f"{number(settings['n_boot'])} bootstrap replicates")
    if settings.get("confidence") is not None:
        level = f"{100 * float(settings['confidence']):g} %"
        parts.append(f"{level} intervals (percentile for the mean weights, BCa for the ratios)")
    if settings.get("nonzero_only") is not None:
        nonzero = settings["nonzero_only"]
        parts.append(
            "only groups with non-zero weight" if nonzero else "zero-weight groups included"
        )
    if settings.get("smoothing_pixels"):
        parts.append(f"σ map smoothed by {number(settings['smoothing_pixels'])} pixels")
    return "; ".join(parts)


#: How the report names the nulls of verdicts.json (``cosmo_sop.structures.nulls``).
NULL_NAMES = {
    "initial": "SOP at initialisation",
    "uniform": "uniform scores, trained groups",
    "random": "random groups, trained selector",
}

#: The hypotheses of :mod:`cosmo_sop.structures.findings`, in words: the question each asks.
HYPOTHESIS_QUESTIONS = {
    "selector": "does the trained selector weigh the class differently for the two outputs?",
    "groups": "do SOP's learnt groups sharpen the effect beyond random groups?",
}

#: The finding rule in words (:func:`cosmo_sop.structures.findings.assess`).
FINDING_RULE = (
    "Each class is tested twice, against its own null, on the same resampled cosmologies "
    "(paired): the selector hypothesis against uniform scores on the trained groups (ratio 1 "
    "by construction), the groups hypothesis against random groups of the same sizes scored by "
    "the trained selector. The statistic is the difference of log ratios, SOP minus null, in "
    "every bootstrap replicate; its one-sided p-value is taken on the side the paper predicts "
    "(voids: more weight for Ωm; clusters: for σ8), and the p-values of all tests of the level "
    "are adjusted together by Holm's rule. A finding is an adjusted p below 0.05. The SOP at "
    "initialisation is not a default null: with the uniform selector start its scores are "
    "uniform too, the same control as uniform scores."
)


def _interval(low: float | None, high: float | None) -> str:
    high_text = "inf" if high is None and low is not None else _g(high)
    return f"[{_g(low)}, {high_text}]"


def _p(value: float | None) -> str:
    return "" if value is None else f"{value:.2g}"


def null_rows(record: Mapping[str, Any]) -> list[list[Any]] | None:
    """Rows (source, ratio, interval, groups, log-ratio difference from SOP with its interval,
    one-sided p, Holm-adjusted p) of the trained SOP and each null of one verdict record; None
    for a record without nulls."""
    nulls = record.get("nulls")
    if not isinstance(nulls, Mapping) or not nulls:
        return None
    rows = [
        [
            "trained SOP",
            _g(record.get("ratio")),
            _interval(record.get("ci_low"), record.get("ci_high")),
            record.get("n_groups"),
            "",
            "",
            "",
        ]
    ]
    adjusted = {
        h.get("null"): h.get("p_adjusted") for h in (record.get("hypotheses") or {}).values()
    }
    for name, null in nulls.items():
        test = null.get("test") or {}
        difference = (
            test["untested"]
            if "untested" in test
            else f"{_g(test.get('difference'))} {_interval(test.get('ci_low'), test.get('ci_high'))}"
        )
        rows.append(
            [
                NULL_NAMES.get(name, name),
                _g(null.get("ratio")),
                _interval(null.get("ci_low"), null.get("ci_high")),
                null.get("n_groups"),
                difference,
                _p(test.get("p_value")),
                _p(adjusted.get(name)),
            ]
        )
    return rows


def finding_text(record: Mapping[str, Any]) -> str | None:
    """Both hypotheses of one class in words, e.g. ``"selector: finding (Holm p 0.002); groups:
    not separated from random groups (Holm p 0.41)"``; None where nothing was assessed."""
    hypotheses = record.get("hypotheses")
    if record.get("finding") is None or not isinstance(hypotheses, Mapping):
        return None
    parts = []
    for name, hypothesis in hypotheses.items():
        null = NULL_NAMES.get(hypothesis.get("null"), hypothesis.get("null"))
        if "untested" in hypothesis:
            parts.append(f"{name}: not tested ({hypothesis['untested']})")
        elif hypothesis.get("finding"):
            parts.append(
                f"{name}: finding, beyond {null} (Holm p {_p(hypothesis.get('p_adjusted'))})"
            )
        else:
            parts.append(
                f"{name}: not separated from {null} "
                f"(Holm p {_p(hypothesis.get('p_adjusted')) or 'n/a'})"
            )
    return "; ".join(parts)


def finding_count(records: Iterable[Mapping[str, Any]]) -> dict[str, dict[str, int]] | None:
    """Per hypothesis, how many classes are findings of those tested (None: nothing assessed)."""
    assessed = [r for r in records if r.get("finding") is not None and r.get("hypotheses")]
    if not assessed:
        return None
    counts: dict[str, dict[str, int]] = {}
    for record in assessed:
        for name, hypothesis in record["hypotheses"].items():
            count = counts.setdefault(name, {"findings": 0, "tested": 0})
            count["tested"] += "untested" not in hypothesis
            count["findings"] += bool(hypothesis.get("finding"))
    return counts


def findings_cell(records: Iterable[Mapping[str, Any]]) -> str | None:
    """:func:`finding_count` in a table cell: ``"selector 1 of 4, groups 0 of 4"`` (None where
    nothing was assessed)."""
    counted = finding_count(records)
    if counted is None:
        return None
    return ", ".join(f"{name} {c['findings']} of {c['tested']}" for name, c in counted.items())


#: The planted control's measured power and false-positive rate (benchmarks/planted.py
#: --write), shown beside every run's verdicts.
CALIBRATION_FILE = "planted_calibration.json"


def calibration_rows(content: Mapping[str, Any]) -> list[list[Any]]:
    """Rows (class, hypothesis, findings with the signal on, with it off) of the planted
    control's table (:data:`CALIBRATION_FILE`), each as ``"k of n (rate [low, high])"``."""
    cells: dict[tuple[str, str], dict[str, str]] = {}
    for row in content.get("rows", []):
        key = (str(row["definition"]), str(row["hypothesis"]))
        text = (
            f"{row['findings']} of {row['runs']} ({row['rate']:.2f} "
            f"[{row['ci_low']:.2f}, {row['ci_high']:.2f}])"
        )
        if row.get("untested"):
            text += f", {row['untested']} not tested (no verdict)"
        outcomes = row.get("outcomes") or {}
        if outcomes:
            text += "; ratio alone: " + ", ".join(f"{n} {o}" for o, n in outcomes.items())
        cells.setdefault(key, {})[str(row["signal"])] = text
    return [
        [definition, hypothesis, by.get("structures", ""), by.get("smooth", "")]
        for (definition, hypothesis), by in cells.items()
    ]
