"""The content of each section of the report, as plain data for the template.

One function per section of one noise level: (a) parameter recovery, (b) faithfulness of the
attributions, (c) voids and clusters; and the table of where the run's time went
(:func:`timing`); :mod:`cosmo_sop.report.build` adds the summary across levels. Each returns
a dict of numbers, strings, tables and figures (:mod:`cosmo_sop.report.tables`); a part that
has not been computed is None.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from importlib.resources import files
from pathlib import Path
from typing import Any

import numpy as np

from cosmo_sop import layout
from cosmo_sop.errors import InputError
from cosmo_sop.figures.labels import MODEL_LABELS
from cosmo_sop.figures.predictions import plot_predicted_vs_true, read_model_predictions
from cosmo_sop.report.inputs import (
    NAMES,
    JobTime,
    png_bytes,
    read_verdicts,
    store_attrs,
    store_sizes,
)
from cosmo_sop.report.sop_accuracy import sop_accuracy
from cosmo_sop.report.tables import (
    FAITHFULNESS_COLUMNS,
    drawn,
    faithfulness_tables,
    figure,
    flatten,
    is_number,
    number,
    table,
)
from cosmo_sop.report.verdicts import (
    CALIBRATION_FILE,
    FINDING_RULE,
    HYPOTHESIS_QUESTIONS,
    agreement,
    bootstrap_note,
    calibration_rows,
    finding_count,
    finding_text,
    group_pixels_note,
    null_rows,
    selector_note,
    verdict_sentence,
    verdict_summary,
)
from cosmo_sop.storage import read_csv, read_json

#: The project's target: SOP's test MSE at most this multiple of its backbone's.
TARGET_RATIO = 1.50
#: SOP's MSE relative to its backbone in the SOP paper (You et al. 2025): 67 % worse.
PAPER_RATIO = 1.67
#: What the faithfulness metrics mean (rows of science/faithfulness.csv).
METRIC_MEANING = {
    "Ins": "insertion AUC: pixels added to an empty map in the method's order",
    "Del": "deletion AUC: pixels removed from the map in the method's order",
    "InsG": "grouped insertion AUC: SOP's groups added in the method's order, area over the "
    "share of pixels added (a group repeating pixels already added adds none)",
    "DelG": "grouped deletion AUC: SOP's groups removed in the method's order, area over the "
    "share of pixels removed",
    "sparsity": "fraction of the pixels holding 90 % of the |attribution| mass (same for all; "
    "SOP's attribution: its groups' contributions c_i (y_i − h(0)) to the standardised output)",
    "MSE top-20%": "MSE of the standardised parameter from the top 20 % of pixels alone",
    "purity": "share of the method's top parts in one class, void or cluster (≈ 0.5 by chance)",
}


def shown(path: Path, level_dir: Path) -> str:
    """A path as the report names it: relative to its level's folder."""
    return path.relative_to(level_dir).as_posix()


# --------------------------------------------------------------------------------------------
# (a) Parameter recovery


def sop_backbone_ratio(metrics: Mapping[str, Mapping[str, Any]]) -> dict[str, float] | None:
    """SOP's test MSE over the backbone's, per parameter and ``"both"`` (sum of standardised MSE).

    The ratio is the same in standardised and physical units: SOP predicts through its
    backbone's label scaling. None if either model is missing.
    """
    sop, backbone = metrics.get(MODEL_LABELS["sop"]), metrics.get(MODEL_LABELS["backbone"])
    if sop is None or backbone is None:
        return None
    a, b = sop["mse_standardised"], backbone["mse_standardised"]
    with np.errstate(divide="ignore", invalid="ignore"):
        ratios = {n: float(np.divide(a[n], b[n])) for n in NAMES}
        ratios["both"] = float(np.divide(sum(a.values()), sum(b.values())))
    return ratios


def ratio_verdict(ratio: float) -> dict[str, Any]:
    """A ratio of test MSE against the target: ``finite``, ``value``, ``percent`` (how much
    worse or better), ``word`` ("worse", "better"), ``met`` (at most :data:`TARGET_RATIO`)."""
    if not math.isfinite(ratio):
        return {"finite": False}
    return {
        "finite": True,
        "value": ratio,
        "percent": abs(ratio - 1) * 100,
        "word": "worse" if ratio >= 1 else "better",
        "met": ratio <= TARGET_RATIO,
    }


def _metrics_table(metrics: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """Models' test MSE (standardised, physical, over the backbone's); lowest MSE marked."""
    backbone = metrics.get(MODEL_LABELS["backbone"])
    rows, best = [], [set() for _ in metrics]
    for entry in metrics.values():
        ratios = [
            entry["mse_standardised"][n] / backbone["mse_standardised"][n]
            if backbone and backbone["mse_standardised"][n] > 0
            else None
            for n in NAMES
        ]
        rows.append(
            [
                *(entry["mse_standardised"][n] for n in NAMES),
                *(entry["mse"][n] for n in NAMES),
                *ratios,
            ]
        )
    for column in range(2 * len(NAMES)):  # the lowest MSE of every column
        values = np.array([row[column] for row in rows], dtype=np.float64)
        if np.isfinite(values).any():
            best[int(np.nanargmin(values))].add(column + 2)
    labelled = [
        [label, entry["n_test_maps"], *row] for (label, entry), row in zip(metrics.items(), rows)
    ]
    return table([], labelled, best)


def recovery(level_dir: Path, metrics: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """(a): the test errors of every model, SOP against its backbone, predicted vs true."""
    ratios = sop_backbone_ratio(metrics)
    predictions = read_model_predictions(level_dir, NAMES)
    plot = None
    if predictions:
        plot = figure(drawn(plot_predicted_vs_true, predictions, names=NAMES), "predicted vs true")
    return {
        "table": _metrics_table(metrics) if metrics else None,
        "ratios": None if ratios is None else {k: ratio_verdict(r) for k, r in ratios.items()},
        "predictions": plot,
        "sop": sop_accuracy(metrics),
    }


# --------------------------------------------------------------------------------------------
# (b) Faithfulness


def _faithfulness_maps(results: Path, level: str) -> str:
    """A sentence on the maps of the faithfulness table and its intervals: attributes
    ``n_maps``, ``n_cosmologies`` and ``n_boot`` of the faithfulness store (and the methods it
    skipped) if recorded, otherwise the size of the explanation store."""
    attrs = store_attrs(layout.science_dir(results, level) / layout.FAITHFULNESS_STORE)
    if attrs and attrs.get("n_maps") is not None:
        text = f"Computed on {number(attrs['n_maps'])} test maps"
        if attrs.get("n_cosmologies") is not None:
            text += f" from {number(attrs['n_cosmologies'])} cosmologies"
        text += "."
        if attrs.get("n_boot") is not None:
            n_boot = int(attrs["n_boot"])
            text += (
                f" Intervals: 95 % percentile bootstrap over whole cosmologies "
                f"({number(n_boot)} resamples; the maps of one cosmology are correlated); no "
                f"p-value of so many resamples is below 2 / {number(n_boot + 1)} = "
                f"{number(2 / (n_boot + 1))}, so a lone difference among m comparisons is "
                "significant only if m times that is below 0.05 (evaluation.n_boot)."
            )
        try:
            skipped = json.loads(attrs.get("skipped") or "{}")
        except (TypeError, json.JSONDecodeError):
            skipped = {}
        if skipped:
            text += f" Left out: {json.dumps(skipped)}."
        return text
    sizes = store_sizes(layout.explanations(results, level))
    if sizes is not None:
        n = sizes.get("sample")
        return f"Computed on the maps of the explanation store ({number(n)} test maps)."
    return "The number of maps is not recorded."


def faithfulness(results: Path, level: str) -> dict[str, Any]:
    """(b): per output, every entry's mean [95 % CI] and the paired differences SOP − entry
    (bold where significant after the correction for the table's many comparisons, which it
    counts); the curves."""
    science = layout.science_dir(results, level)
    path = science / layout.FAITHFULNESS_CSV
    content = read_csv(path)
    tables, own_model, comparisons, significant = None, False, 0, 0
    if content is not None:
        header, rows = content
        missing = [c for c in FAITHFULNESS_COLUMNS if c not in header]
        if missing:
            raise InputError(
                path,
                f"lacks the columns {missing} (written before they existed: rerun the step, "
                "snakemake --forcerun faithfulness)",
            )
        outputs = dict.fromkeys(row[header.index("output")] for row in rows)
        tables = [{"name": o, **faithfulness_tables(header, rows, o)} for o in outputs]
        # Scored on its own model too (evaluation.own_model), or on the backbone only.
        own_model = any(row[header.index("scorer")] != "backbone" for row in rows)
        adjusted = [row[header.index("diff_p_adjusted")] for row in rows]
        comparisons = sum(is_number(p) and not math.isnan(float(p)) for p in adjusted)
        significant = sum(row[header.index("significant")] == "true" for row in rows)
    return {
        "own_model": own_model,
        "comparisons": comparisons,
        "significant": significant,
        "file": shown(path, layout.level_dir(results, level)),
        "maps": _faithfulness_maps(results, level) if content is not None else None,
        "meaning": METRIC_MEANING,
        "outputs": tables,
        "curves": figure(png_bytes(science / layout.FAITHFULNESS_CURVES), "faithfulness curves"),
    }


# --------------------------------------------------------------------------------------------
# (c) Voids and clusters


def _calibration() -> dict[str, Any] | None:
    """The planted control's power and false-positive rate, as the package records them
    (benchmarks/planted.py --write); None where not measured."""
    resource = files("cosmo_sop.report") / CALIBRATION_FILE
    if not resource.is_file():
        return None
    content = json.loads(resource.read_text())
    header = ["class", "hypothesis", "findings, signal on (power)", "signal off (false positives)"]
    return {
        "seeds": content.get("seeds"),
        "config": content.get("config"),
        "table": table(header, calibration_rows(content)),
    }


def _verdicts(path: Path) -> dict[str, Any] | None:
    content = read_verdicts(path)
    if content is None:
        return None
    records = content["verdicts"]
    header = [
        "",
        "Om/s8 ratio",
        "95% CI",
        "groups",
        "log ratio, SOP − null [95% CI]",
        "one-sided p",
        "Holm p",
    ]
    return {
        "agreement": agreement(verdict_summary(records)),
        "sentences": [
            {
                "definition": str(r["definition"]),
                "sentence": verdict_sentence(r, content),
                "finding": finding_text(r),
                "nulls": None if null_rows(r) is None else table(header, null_rows(r)),
            }
            for r in records
        ],
        "findings": finding_count(records),
        "finding_rule": FINDING_RULE,
        "questions": HYPOTHESIS_QUESTIONS,
        "calibration": _calibration(),
        "note": bootstrap_note(content),
        "selectors": selector_note(content),
        "group_pixels": group_pixels_note(content),
    }


def _purity(science: Path) -> dict[str, Any] | None:
    """SOP's purity (purity_sop.json) and every method's (purity.csv), where computed."""
    purity = read_json(science / layout.PURITY_SOP)
    methods = read_csv(science / layout.PURITY_CSV)
    if purity is None and methods is None:
        return None
    out: dict[str, Any] = {"sop": None, "sop_groups": None, "flat": None, "methods": None}
    per_output = purity.get("purity") if isinstance(purity, Mapping) else None
    if isinstance(per_output, Mapping) and all(isinstance(v, Mapping) for v in per_output.values()):
        rows = [
            [output, v.get("purity"), v.get("ci_low"), v.get("ci_high"), v.get("n_maps")]
            for output, v in per_output.items()
        ]
        out["sop"] = table(["output", "purity", "CI low", "CI high", "maps"], rows)
        groups = purity.get("group_purity")
        if isinstance(groups, Mapping) and all(isinstance(v, Mapping) for v in groups.values()):
            rows = [
                [output, v.get("purity"), v.get("ci_low"), v.get("ci_high"), v.get("n_maps")]
                for output, v in groups.items()
            ]
            out["sop_groups"] = table(["output", "purity", "CI low", "CI high", "maps"], rows)
    elif purity is not None:
        out["flat"] = table(["quantity", "value"], [[k, v] for k, v in flatten(purity)])
    if methods is not None:
        header, rows = methods
        out["methods"] = table([h.replace("_", " ") for h in header], rows)
    return out


def _groups(groups: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """How many groups SOP gives weight to, and how large they are."""
    if not groups:
        return None
    nonzero = groups.get("nonzero_groups_per_map") or {}
    size = groups.get("mean_group_size") or {}
    rows = []
    for n in NAMES:
        fraction = size.get(n)
        rows.append([n, nonzero.get(n), None if fraction is None else 100 * float(fraction)])
    header = [
        "output",
        "groups with non-zero weight per map",
        "mean size of those groups (% of the map)",
    ]
    return {
        "n_groups": groups.get("n_groups"),
        "n_maps": groups.get("n_maps"),
        "table": table(header, rows),
    }


def _examples(science: Path) -> list[dict[str, Any]]:
    """The example-group figures, in their order (example_groups, _2, ..., _10)."""
    stem = Path(layout.EXAMPLE_GROUPS).stem
    paths = sorted(science.glob(f"{stem}*.png"), key=lambda p: (len(p.name), p.name))
    return [figure(png_bytes(p), p.stem.replace("_", " ")) for p in paths]


def structures(
    results: Path, level: str, metrics: Mapping[str, Mapping[str, Any]]
) -> dict[str, Any]:
    """(c): the verdicts, the weight table, the purity, the figures, SOP's groups."""
    level_dir = layout.level_dir(results, level)
    science = layout.science_dir(results, level)
    sizes = store_sizes(layout.explanations(results, level))
    weights = read_csv(science / layout.WEIGHTS_CSV)
    if weights is not None:
        header, rows = weights
        weights = table([h.replace("_", " ") for h in header], rows)
    sop = metrics.get(MODEL_LABELS["sop"]) or {}
    return {
        "store": None
        if sizes is None
        else {"maps": sizes.get("sample"), "groups": sizes.get("group")},
        "verdicts_file": shown(science / layout.VERDICTS, level_dir),
        "verdicts": _verdicts(science / layout.VERDICTS),
        "weights_file": shown(science / layout.WEIGHTS_CSV, level_dir),
        "weights": weights,
        "purity": _purity(science),
        "histograms": figure(png_bytes(science / layout.WEIGHT_HISTOGRAMS), "weight histograms"),
        "examples": _examples(science),
        "groups_file": shown(
            layout.model_dir(results, level, "sop") / layout.TEST_METRICS, level_dir
        ),
        "groups": _groups(sop.get("groups")),
    }


# --------------------------------------------------------------------------------------------
# Where the time went

#: The columns of the timing table.
TIMING_HEADER = ("rule", "jobs", "seconds, all jobs", "seconds, longest job", "peak memory (MiB)")


def _clock(seconds: float) -> str:
    """Seconds as hours, minutes and seconds: ``"1 h 2 min 3 s"``, ``"35 min 26 s"``, ``"4 s"``."""
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    parts = [(hours, "h"), (minutes, "min"), (secs, "s")]
    shown = [f"{value} {unit}" for value, unit in parts if value] or ["0 s"]
    return " ".join(shown)


def _seconds(seconds: float) -> str:
    """Seconds for the table: whole from 10 s on (no exponent however long), else to 0.1 s."""
    return f"{seconds:.0f}" if seconds >= 10 else f"{seconds:.1f}"


def _mib(mib: float | None) -> str | None:
    """Memory for the table, in whole MiB."""
    return None if mib is None else f"{mib:.0f}"


def _peak(jobs: Sequence[JobTime]) -> float | None:
    measured = [job.max_rss_mib for job in jobs if job.max_rss_mib is not None]
    return max(measured) if measured else None


def _timing_row(label: str, jobs: Sequence[JobTime]) -> list[Any]:
    seconds = [job.seconds for job in jobs]
    return [label, len(jobs), _seconds(sum(seconds)), _seconds(max(seconds)), _mib(_peak(jobs))]


def timing(jobs: Sequence[JobTime]) -> dict[str, Any] | None:
    """Where the run's time went: per rule, its jobs, their seconds in all, the longest job's
    and the largest peak memory (``max_rss``) of its jobs, the rule of most seconds first; then
    a line for all jobs. None without a record.

    Parameters
    ----------
    jobs
        The jobs' benchmark records (:func:`cosmo_sop.report.inputs.read_benchmarks`).

    Returns
    -------
    dict or None
        ``table`` (:data:`TIMING_HEADER`; the last row is the total; seconds whole from 10 s
        on, memory in whole MiB), ``jobs`` (how many), ``seconds`` (their sum; as text
        ``seconds_text``), ``clock`` (that sum in hours, minutes and seconds) and ``peak`` (the
        largest peak memory in MiB, None if none was measured; as text ``peak_text``).
    """
    if not jobs:
        return None
    by_rule: dict[str, list[JobTime]] = {}
    for job in jobs:
        by_rule.setdefault(job.rule, []).append(job)
    rules = sorted(by_rule.items(), key=lambda item: (-sum(j.seconds for j in item[1]), item[0]))
    rows = [_timing_row(rule, ran) for rule, ran in rules] + [_timing_row("all jobs", jobs)]
    total = sum(job.seconds for job in jobs)
    return {
        "table": table(TIMING_HEADER, rows),
        "jobs": len(jobs),
        "seconds": total,
        "seconds_text": _seconds(total),
        "clock": _clock(total),
        "peak": _peak(jobs),
        "peak_text": _mib(_peak(jobs)) or "not measured",
    }
