"""The report's sections of the further tasks (config key ``tasks``).

- ``vit_maps``: the CNN and the ViT side by side on each level the ViT ran on (backbone and SOP
  test MSE, SOP over its backbone with its cosmology-bootstrap interval, SOP against the
  random-group floor, void/cluster findings), then the ViT's faithfulness and void/cluster
  sections, built by the same functions as the CNN's.
- ``vit_images``, ``bert_text``: the tables a task records in its ``task_metrics.json``
  (``{"title", "caption", "columns", "rows", "bold"}``), its summary and its figures.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from cosmo_sop import layout
from cosmo_sop.errors import InputError
from cosmo_sop.figures.labels import MODEL_LABELS
from cosmo_sop.report.inputs import NAMES, png_bytes, read_test_metrics, read_verdicts
from cosmo_sop.report.sections import faithfulness, structures
from cosmo_sop.report.sop_accuracy import floor_comparison, ratio_interval
from cosmo_sop.report.tables import figure, number, table
from cosmo_sop.report.verdicts import findings_cell
from cosmo_sop.storage import read_json

#: Headings of the image and text tasks.
TASK_TITLES = {
    "vit_images": "Images: SOP around a Vision Transformer, against exact object masks",
    "bert_text": "Text: SOP around a pretrained MiniLM encoder, against evidence sentences",
}
_ARCHITECTURE_LABELS = {"cnn": "CNN", "vit": "ViT"}


def vit_maps_section(results: Path, levels: Sequence[str]) -> dict[str, Any] | None:
    """The CNN against the ViT per level, and the ViT's (b) and (c) sections; None if the ViT
    has no level folder."""
    root = layout.task_dir(results, "vit_maps")
    shown = [level for level in levels if layout.level_dir(root, level).is_dir()]
    if not shown:
        return None
    rows = []
    for level in shown:
        for architecture, tree in (("cnn", results), ("vit", root)):
            rows.append(
                [level, _ARCHITECTURE_LABELS[architecture], *_comparison_cells(tree, level)]
            )
    header = ["noise level", "backbone"]
    header += [f"backbone MSE {n}" for n in NAMES] + [f"SOP MSE {n}" for n in NAMES]
    header += [f"{n}: SOP / backbone [95 % CI]" for n in NAMES]
    header += [f"{n}: SOP below the random-group floor" for n in NAMES]
    header += ["void/cluster findings (paired tests, Holm)"]
    return {
        "comparison": table(header, rows),
        "levels": [
            {
                "name": level,
                "anchor": "vit-" + "".join(c if c.isalnum() else "-" for c in level),
                "faithfulness": faithfulness(root, level),
                "structures": structures(root, level, read_test_metrics(root / level)),
            }
            for level in shown
        ],
    }


def _comparison_cells(tree: Path, level: str) -> list[Any]:
    metrics = read_test_metrics(layout.level_dir(tree, level))
    backbone, sop = metrics.get(MODEL_LABELS["backbone"]), metrics.get(MODEL_LABELS["sop"])
    cells: list[Any] = [
        None if entry is None else entry["mse_standardised"][n]
        for entry in (backbone, sop)
        for n in NAMES
    ]
    cells += [None if sop is None else ratio_interval(sop, n) for n in NAMES]
    below = floor_comparison(metrics) or {}
    cells += [None if n not in below else ("yes" if below[n] else "no") for n in NAMES]
    content = read_verdicts(layout.science_dir(tree, level) / layout.VERDICTS)
    cells.append(None if content is None else findings_cell(content["verdicts"]))
    return cells


def task_sections(results: Path, tasks: Sequence[str]) -> list[dict[str, Any]]:
    """The recorded tables and figures of each image or text task in ``tasks``."""
    sections = []
    for task in tasks:
        if task not in TASK_TITLES:
            continue
        path = layout.task_metrics(results, task)
        content = read_json(path)
        section: dict[str, Any] = {"task": task, "title": TASK_TITLES[task], "file": str(path)}
        if content is None:
            sections.append({**section, "missing": True})
            continue
        section.update(missing=False, **_recorded(content, path))
        sections.append(section)
    return sections


def _recorded(content: Mapping[str, Any], path: Path) -> dict[str, Any]:
    """The tables, summary and figures of one ``task_metrics.json``."""
    try:
        tables = [_recorded_table(entry) for entry in content.get("tables", [])]
        summary = [[key, value] for key, value in (content.get("summary") or {}).items()]
    except (KeyError, TypeError, ValueError) as error:
        raise InputError(path, f"unreadable task tables ({error})") from None
    figures = [figure(png_bytes(path.parent / name), name) for name in content.get("figures") or []]
    seconds = content.get("seconds")
    return {
        "tables": tables,
        "summary": table(["quantity", "value"], summary) if summary else None,
        "figures": figures,
        "seconds": None if seconds is None else number(seconds, 3),
    }


def _recorded_table(entry: Mapping[str, Any]) -> dict[str, Any]:
    bold = entry.get("bold") or []
    best = [
        {j for j, b in enumerate(bold[i] if i < len(bold) else []) if b}
        for i in range(len(entry["rows"]))
    ]
    return {
        "title": str(entry["title"]),
        "caption": str(entry.get("caption", "")),
        "table": table(entry["columns"], entry["rows"], best),
    }
