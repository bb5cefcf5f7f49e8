"""The results of a run as one self-contained HTML page, for a cosmologist to open.

:func:`write_report` reads what the workflow wrote under ``results/`` for each noise level
(paths from :mod:`cosmo_sop.layout`)::

    <level>/models/{backbone,xdnn,sop}/test_metrics.json, test_predictions.npz
    <level>/summary_statistics.json, summary_statistics.npz
    <level>/science/faithfulness.csv, faithfulness.zarr (its n_maps), purity.csv,
                    faithfulness_curves.png
    <level>/science/weights.csv, verdicts.json, purity_sop.json,
                    weight_histograms.png, example_groups*.png
    <level>/patches.zarr (attributes: the config used), explanations.zarr (its size)

and every job's benchmark record, ``benchmarks/<rule>/<job>.tsv`` (Snakemake's, of each
rule's ``benchmark:``), builds plain data of them (:mod:`cosmo_sop.report.sections`), fills the
Jinja2 template ``template.html.j2`` beside this module with it (autoescaped) and writes one
HTML file: plain HTML and a little CSS, figures embedded as base64 PNG, no JavaScript and no
external file, so it can be mailed or archived as is. Every part that a run has not (yet)
produced is shown as "not computed" rather than stopping the report; a file that exists but
cannot be read raises :class:`~cosmo_sop.errors.InputError` naming it.

Sections: a summary across noise levels (test error per level, SOP against its backbone, the
void/cluster verdicts at a glance, the config), the mock's halos and other runs beside this one
(:mod:`cosmo_sop.report.comparison`), then per level (a) parameter recovery,
(b) faithfulness of the attributions, (c) voids and clusters; then the further tasks
(:mod:`cosmo_sop.report.tasks`): the ViT beside the CNN on the same maps, the image and the
text task; last, where the run's time went (a table of the jobs' benchmark records per rule).
"""

from __future__ import annotations

import functools
import json
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jinja2
from markupsafe import Markup, escape

from cosmo_sop import __version__, layout
from cosmo_sop.errors import InputError
from cosmo_sop.figures.labels import HTML
from cosmo_sop.figures.predictions import plot_mse_per_level
from cosmo_sop.ingest.bad_maps import read_skipped_maps
from cosmo_sop.report.comparison import comparison_section, halo_section
from cosmo_sop.report.inputs import (
    NAMES,
    benchmark_files,
    config_from_attrs,
    read_benchmarks,
    read_test_metrics,
    read_verdicts,
    store_attrs,
)
from cosmo_sop.report.sections import (
    PAPER_RATIO,
    TARGET_RATIO,
    faithfulness,
    recovery,
    sop_backbone_ratio,
    structures,
    timing,
)
from cosmo_sop.report.tables import NOT_COMPUTED, drawn, figure, number, table
from cosmo_sop.report.tasks import task_sections, vit_maps_section
from cosmo_sop.report.verdicts import findings_cell, glance, verdict_summary
from cosmo_sop.storage import atomic_path


def write_report(
    results_dir: str | os.PathLike,
    levels: Sequence[str],
    out_html: str | os.PathLike,
    config: Mapping[str, Any] | None = None,
    title: str = "cosmo-sop results",
    benchmarks: Sequence[str | os.PathLike] | None = None,
) -> Path:
    """Write the HTML report of a run: one self-contained page.

    Parameters
    ----------
    results_dir
        The run's results folder (one sub-folder per noise level).
    levels
        Noise levels to report, in display order (sub-folders of ``results_dir``).
    out_html
        Output file, written atomically.
    config
        The workflow config to show; default: the ``config`` attribute of the first level's
        patch store.
    title
        Page title.
    benchmarks
        The jobs' benchmark records to show where the time went (the workflow passes every
        job's but the report's own, which is still running); default: every record under
        ``results_dir/benchmarks/`` (:func:`cosmo_sop.report.inputs.benchmark_files`).

    Returns
    -------
    Path
        ``out_html``.

    Raises
    ------
    InputError
        If ``results_dir`` is not a folder, ``levels`` is empty, a file that exists cannot be
        read, or a benchmark record in ``benchmarks`` is missing or malformed. Parts not
        computed yet are reported as such.
    """
    results_dir = Path(results_dir)
    if not results_dir.is_dir():
        raise InputError(results_dir, "results folder not found")
    if isinstance(levels, str) or not levels:
        raise InputError(
            "argument 'levels'", f"must be a non-empty list of noise levels, got {levels!r}"
        )
    if benchmarks is None:
        benchmarks = benchmark_files(results_dir)
    levels = [str(level) for level in levels]
    content = page_content(results_dir, levels, config, title, benchmarks)
    page = _environment().get_template("template.html.j2").render(content)
    out_html = Path(out_html)
    with atomic_path(out_html) as tmp:
        tmp.write_text(page, encoding="utf-8")
    return out_html


def page_content(
    results: Path,
    levels: list[str],
    config: Mapping[str, Any] | None,
    title: str,
    benchmarks: Sequence[str | os.PathLike] = (),
) -> dict[str, Any]:
    """Everything the template shows, as plain data (numbers, strings, tables, figures);
    ``benchmarks``: the jobs' benchmark records of the table of where the time went."""
    metrics = {level: read_test_metrics(layout.level_dir(results, level)) for level in levels}
    return {
        "title": title,
        "results_dir": str(results.resolve()),
        "version": __version__,
        "names": list(NAMES),
        "not_computed": NOT_COMPUTED,
        "target": {"ratio": TARGET_RATIO, "paper": PAPER_RATIO},
        "summary": _summary(results, levels, metrics, config),
        "levels": [_level(results, level, metrics[level]) for level in levels],
        "halos": halo_section(results),
        "comparison": comparison_section(results, levels, config),
        **_tasks(results, levels, config),
        "timing": timing(read_benchmarks(benchmarks)),
        "benchmarks_dir": str(layout.benchmarks(results)),
    }


def _tasks(results: Path, levels: list[str], config: Mapping[str, Any] | None) -> dict[str, Any]:
    """The sections of the further tasks: those the config names, else those on disk."""
    if config is not None and "tasks" in config:
        tasks = list(config["tasks"])
    else:
        tasks = [task for task in layout.TASKS if layout.task_dir(results, task).is_dir()]
    return {
        "vit": vit_maps_section(results, levels) if "vit_maps" in tasks else None,
        "tasks": task_sections(results, tasks),
    }


def _level(results: Path, level: str, metrics: Mapping[str, Any]) -> dict[str, Any]:
    folder = layout.level_dir(results, level)
    anchor = "level-" + re.sub(r"[^A-Za-z0-9_-]", "-", level)
    out: dict[str, Any] = {"name": level, "anchor": anchor, "missing": None}
    if not folder.is_dir():
        out["missing"] = f"Results of noise level {level!r} (no folder {folder})"
        return out
    out["recovery"] = recovery(folder, metrics)
    out["faithfulness"] = faithfulness(results, level)
    out["structures"] = structures(results, level, metrics)
    return out


def _summary(
    results: Path,
    levels: list[str],
    metrics: Mapping[str, Mapping[str, Any]],
    config: Mapping[str, Any] | None,
) -> dict[str, Any]:
    """Test errors per level, SOP against its backbone and the verdicts per level, the config."""
    errors = {
        level: {label: entry["mse_standardised"] for label, entry in metrics[level].items()}
        for level in levels
        if metrics[level]
    }
    plot = (
        figure(drawn(plot_mse_per_level, errors, names=NAMES), "MSE per noise level")
        if errors
        else None
    )
    rows = []
    for level in levels:
        ratios = sop_backbone_ratio(metrics[level])
        content = read_verdicts(layout.science_dir(results, level) / layout.VERDICTS)
        counts = None if content is None else verdict_summary(content["verdicts"])
        met = None if ratios is None else ratios["both"] <= TARGET_RATIO
        rows.append(
            [
                level,
                *(NOT_COMPUTED if ratios is None else ratios[n] for n in NAMES),
                NOT_COMPUTED if met is None else ("yes" if met else "no"),
                _with_findings(glance(counts), content),
            ]
        )
    return {
        "mse_figure": plot,
        "table": table([], rows),
        "config": _shown_config(results, levels, config),
        "noise": _noise_table(results, levels),
        "skipped": _skipped_maps(results, levels),
    }


def _skipped_maps(results: Path, levels: list[str]) -> dict[str, Any] | None:
    """The map files ingest left out (``ingest.on_bad_map: skip``) and why, as the patch store
    records them (the noise stores carry its attributes); None if it was not skipping."""
    for path in [layout.patches(results)] + [layout.level_patches(results, lv) for lv in levels]:
        attrs = store_attrs(path)
        records = None if attrs is None else read_skipped_maps(attrs, path)
        if records is not None:
            rows = [[record["path"], record["problem"]] for record in records]
            shown = table(["map file", "problem"], rows) if rows else None
            return {"source": str(path), "count": len(rows), "table": shown}
    return None


def _with_findings(cell: str | None, content: Mapping[str, Any] | None) -> str:
    """A level's verdict cell, with how many classes are findings per hypothesis."""
    if cell is None or content is None:
        return NOT_COMPUTED
    counted = findings_cell(content["verdicts"])
    if counted is None:
        return cell
    return f"{cell} — findings (paired tests, Holm): {counted}"


def _shown_config(
    results: Path, levels: list[str], config: Mapping[str, Any] | None
) -> dict[str, str] | None:
    """The config as passed to the report, else as the first patch store records it."""
    source = "as passed to the report"
    if config is None:
        for level in levels:
            path = layout.level_patches(results, level)
            attrs = store_attrs(path)
            if attrs is not None:
                config = config_from_attrs(attrs, path)
                source = f"from the attributes of {path}"
                break
    if config is None:
        return None
    return {"source": source, "text": json.dumps(config, indent=2, sort_keys=True, default=str)}


def _noise_table(results: Path, levels: list[str]) -> dict[str, Any] | None:
    rows = []
    for level in levels:
        attrs = store_attrs(layout.level_patches(results, level))
        if attrs is not None and "noise" in attrs:
            rows.append([level, attrs["noise"], attrs.get("sigma_pix", "")])
    return table(["noise level", "noise settings", "σ per pixel per bin"], rows) if rows else None


def _parameter(name: str) -> Markup:
    """A parameter's name as the page writes it (markup of :data:`cosmo_sop.figures.labels.HTML`)."""
    return Markup(HTML[name]) if name in HTML else escape(name)


@functools.cache
def _environment() -> jinja2.Environment:
    environment = jinja2.Environment(
        loader=jinja2.PackageLoader("cosmo_sop.report", ""),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    environment.filters["param"] = _parameter
    environment.filters["number"] = number
    return environment
