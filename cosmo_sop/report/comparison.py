"""This run beside other runs (``report.compare_with``): test errors and void/cluster ratios.

The halo mock and the lognormal-only mock differ in what their maps carry beyond the power
spectrum, so the same pipeline on both tells what the halos change downstream: whether the CNN
beats the classical summary statistics, and how SOP weighs voids and clusters. Each run is a
finished results folder of its own (e.g. ``snakemake --configfile config/lognormal.yaml``);
this section reads their files as the rest of the report reads this run's, and a run or level
not on disk reads "not computed". Also the halo mock's own physics checks
(``figures/mock_halos.json``) in numbers, where the run has them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cosmo_sop import layout
from cosmo_sop.figures.labels import MODEL_LABELS, SUMMARY_LABEL
from cosmo_sop.report.inputs import (
    NAMES,
    open_store,
    png_bytes,
    read_test_metrics,
    read_verdicts,
)
from cosmo_sop.report.tables import NOT_COMPUTED, figure, number, table
from cosmo_sop.statistics import bootstrap_ratio_of_means
from cosmo_sop.storage import read_json
from cosmo_sop.training.comparison import read_test_predictions

#: Bootstrap of the CNN / summary-statistics MSE ratio over the test cosmologies.
N_BOOT, BOOT_SEED = 2000, 0
#: The summary-statistics regressor the CNN is set against.
SUMMARY_KIND = "mlp"


def _runs(results: Path, config: Mapping[str, Any] | None) -> list[tuple[str, Path]]:
    """(label, results folder) of this run and of every ``report.compare_with`` entry."""
    others = [] if config is None else config.get("report", {}).get("compare_with", [])
    return [("this run", results)] + [(entry["label"], Path(entry["results"])) for entry in others]


def _interval(record: Mapping[str, Any] | None) -> str:
    """``ratio [low, high], outcome (n groups)`` of a verdict record."""
    if record is None:
        return NOT_COMPUTED
    if record.get("ratio") is None:
        return f"{record.get('outcome')} ({record.get('n_groups')} groups)"
    low, high = record.get("ci_low"), record.get("ci_high")
    return (
        f"{number(record['ratio'], 3)} [{number(low, 3)}, {number(high, 3)}], "
        f"{record.get('outcome')} ({record['n_groups']} groups)"
    )


def cnn_over_summary(folder: Path, level: str) -> dict[str, Any] | None:
    """Test MSE of the CNN over that of the summary-statistics MLP, per parameter, with its
    bootstrap interval over the test cosmologies; None where either is not computed."""
    backbone = layout.model_dir(folder, level, "backbone") / layout.TEST_PREDICTIONS
    summary = layout.summary_statistics_predictions(folder, level)
    patches = layout.level_patches(folder, level)
    if not (backbone.is_file() and summary.is_file() and patches.exists()):
        return None
    store = open_store(patches)
    if "cosmology" not in store:
        return None  # no bootstrap unit
    cnn = read_test_predictions(backbone)
    with np.load(summary) as stored:
        sample, true = stored["sample"], stored["true"]
        predicted = stored[f"predicted_{SUMMARY_KIND}"]
    order_cnn, order_summary = np.argsort(cnn["sample"]), np.argsort(sample)
    if not np.array_equal(cnn["sample"][order_cnn], sample[order_summary]):
        return None  # other test maps: not comparable
    cosmologies = store["cosmology"].values[sample[order_summary]]
    interval = bootstrap_ratio_of_means(
        (cnn["predictions"] - cnn["targets"])[order_cnn] ** 2,
        (predicted - true)[order_summary] ** 2,
        cosmologies,
        N_BOOT,
        BOOT_SEED,
    )
    return {
        str(name): (interval.estimate[i], interval.low[i], interval.high[i])
        for i, name in enumerate(cnn["names"])
    }


def _ratio_cell(ratios: Mapping[str, Any] | None) -> tuple[str, bool]:
    """The CNN / summary ratios as text, and whether every interval excludes 1."""
    if ratios is None:
        return NOT_COMPUTED, False
    text = " / ".join(
        f"{number(r, 3)} [{number(lo, 3)}, {number(hi, 3)}]"
        for r, lo, hi in (ratios[name] for name in NAMES)
    )
    return text, all(lo > 1 or hi < 1 for _, lo, hi in ratios.values())


def _errors(metrics: Mapping[str, Any], label: str) -> str:
    entry = metrics.get(label)
    if entry is None:
        return NOT_COMPUTED
    mse = entry["mse_standardised"]
    return " / ".join(number(mse[name], 3) for name in NAMES)


def comparison_section(
    results: Path, levels: Sequence[str], config: Mapping[str, Any] | None
) -> dict[str, Any] | None:
    """Per level, a table of test MSE (standardised, Omega_m / sigma_8) of the CNN and the
    summary-statistics regressors with the CNN / MLP ratio and its interval (bold where every
    interval excludes 1), and one of SOP's void/cluster weight ratios with their intervals,
    for this run and each ``report.compare_with`` run; None without any."""
    runs = _runs(results, config)
    if len(runs) == 1:
        return None
    header = ["", *(f"{label} ({folder})" for label, folder in runs)]
    out = []
    for level in levels:
        metrics = [read_test_metrics(layout.level_dir(folder, level)) for _, folder in runs]
        labels = [MODEL_LABELS["backbone"]] + sorted(
            {label for m in metrics for label in m if label.startswith(SUMMARY_LABEL.split("{")[0])}
        )
        error_rows = [[label, *(_errors(m, label) for m in metrics)] for label in labels]
        cells = [_ratio_cell(cnn_over_summary(folder, level)) for _, folder in runs]
        error_rows.append(
            [f"CNN / {SUMMARY_LABEL.format(SUMMARY_KIND)} MSE [95 % CI]", *(c for c, _ in cells)]
        )
        best = [set()] * (len(error_rows) - 1) + [{j + 1 for j, (_, b) in enumerate(cells) if b}]
        verdicts = [
            read_verdicts(layout.science_dir(folder, level) / layout.VERDICTS) for _, folder in runs
        ]
        keyed = [
            {}
            if content is None
            else {(r["definition"], r["kind"]): r for r in content["verdicts"]}
            for content in verdicts
        ]
        keys = sorted({key for records in keyed for key in records})
        ratio_rows = [
            [
                f"{kind}s, {definition}",
                *(_interval(records.get((definition, kind))) for records in keyed),
            ]
            for definition, kind in keys
        ]
        out.append(
            {
                "level": level,
                "errors": table(["test MSE Ωm / σ8", *header[1:]], error_rows, best),
                "ratios": table(["weight ratio Ωm / σ8 [CI]", *header[1:]], ratio_rows)
                if ratio_rows
                else None,
            }
        )
    return {
        "runs": [{"label": label, "results": str(folder)} for label, folder in runs],
        "levels": out,
    }


def halo_section(results: Path) -> dict[str, Any] | None:
    """The halo mock's physics checks (``figures/mock_halos.json`` and the peaks figure) in
    numbers: peaks above S/N 4 and their sigma_8 information, both mocks; None if absent."""
    numbers = read_json(layout.figures(results) / layout.HALO_DIAGNOSTICS)
    if numbers is None:
        return None
    peaks = numbers["peaks"]
    rows = []
    for mock, label in (("lognormal", "lognormal only"), ("with_halos", "with halos")):
        for t, threshold in enumerate(peaks["thresholds"]):
            counts = [row[t] for row in peaks[mock]]
            rows.append(
                [
                    label,
                    f"S/N > {threshold:g}",
                    " / ".join(str(int(c)) for c in counts),
                    number(peaks["log_slope"][mock][t], 3),
                    number(peaks["fisher_sigma8"][mock][t], 3),
                ]
            )
    sigma8 = " / ".join(f"{s:g}" for s in numbers["sigma8"])
    return {
        "sampled": numbers["counts"]["total_sampled"],
        "omega_m": numbers["omega_m"],
        "sigma8": numbers["sigma8"][len(numbers["sigma8"]) // 2],
        "table": table(
            ["mock", "peaks", f"count at σ8 = {sigma8}", "d ln N / d ln σ8", "(dN/dσ8)² / N"],
            rows,
        ),
        "figure": figure(
            png_bytes(layout.figures(results) / layout.HALO_FIGURES["peaks"]), "peak counts"
        ),
    }
