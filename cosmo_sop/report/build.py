"""The results of a run as one self-contained HTML page, for a cosmologist to open.

:func:`write_report` reads what the workflow wrote under ``results/`` for each noise level
(the layout is in :mod:`cosmo_sop.model_runs` and the science step)::

    <level>/models/{backbone,xdnn,sop}/test_metrics.json, test_predictions.npz
    <level>/summary_statistics.json, summary_statistics.npz
    <level>/science/faithfulness.csv, faithfulness.zarr (its n_maps), purity.csv,
                    faithfulness_curves.png
    <level>/science/weights.csv, verdicts.json, purity_sop.json,
                    weight_histograms.png, example_groups*.png
    <level>/patches.zarr (attributes: the config used), explanations.zarr (its size)

and writes one HTML file: plain HTML and a little CSS, figures embedded as base64 PNG, no
JavaScript and no external file, so it can be mailed or archived as is. Every part that a run
has not (yet) produced is shown as "not computed" rather than stopping the report; a file
that exists but cannot be read raises :class:`~cosmo_sop.errors.InputError` naming it.

Sections: a summary across noise levels (test error per level, SOP against its backbone, the
void/cluster verdicts at a glance, the config), then per level (a) parameter recovery,
(b) faithfulness of the attributions, (c) voids and clusters.
"""

from __future__ import annotations

import base64
import csv
import html
import json
import math
import os
import re
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from cosmo_sop import __version__
from cosmo_sop.errors import InputError
from cosmo_sop.figures.predictions import (
    MODEL_LABELS,
    SUMMARY_LABEL,
    plot_mse_per_level,
    plot_predicted_vs_true,
    read_model_predictions,
)
from cosmo_sop.storage import atomic_path

#: The parameters, in output order, and how the page writes them.
NAMES: tuple[str, ...] = ("Om", "s8")
DISPLAY = {"Om": "Ω<sub>m</sub>", "s8": "σ<sub>8</sub>"}
#: The project's target: SOP's test MSE at most this multiple of its backbone's.
TARGET_RATIO = 1.20
#: SOP's MSE relative to its backbone in the SOP paper (You et al. 2025): 67 % worse.
PAPER_RATIO = 1.67
#: What the faithfulness metrics mean (rows of science/faithfulness.csv).
METRIC_MEANING = {
    "Ins": "insertion AUC: pixels added to an empty map in the method's order",
    "Del": "deletion AUC: pixels removed from the map in the method's order",
    "InsG": "grouped insertion AUC: whole groups added in the method's order",
    "DelG": "grouped deletion AUC: whole groups removed in the method's order",
    "sparsity": "fraction of the map covered by groups with non-zero weight",
    "groups": "groups with non-zero weight per map",
    "purity": "share of the method's top parts in one class, void or cluster (≈ 0.5 by chance)",
}
#: The SOP paper's findings, per structure kind, as the verdict sentences name them.
PAPER_FINDING = {"void": "voids weigh more for Ω<sub>m</sub>",
                 "cluster": "clusters weigh more for σ<sub>8</sub>"}
#: Outcome phrases of :func:`cosmo_sop.structures.verdict`, in the order they are counted.
#: "disagrees" comes first: it contains "agrees".
OUTCOMES = (("disagrees with the paper", "disagree"), ("agrees with the paper", "agree"),
            ("inconclusive", "inconclusive"), ("no verdict", "no verdict"))

NOT_COMPUTED = "not computed"

CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Helvetica, Arial, sans-serif;
       max-width: 1150px; margin: 2em auto; padding: 0 1em; color: #222; line-height: 1.45; }
h1 { border-bottom: 2px solid #444; padding-bottom: .2em; }
h2 { border-bottom: 1px solid #bbb; margin-top: 2.2em; }
h3 { margin-top: 1.6em; }
table { border-collapse: collapse; margin: .6em 0 1em; font-size: .92em; }
th, td { border: 1px solid #ccc; padding: .25em .6em; }
th { background: #f0f0f0; text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
td.best { font-weight: bold; background: #eef6ee; }
img { max-width: 100%; height: auto; border: 1px solid #eee; margin: .5em 0; }
.missing { color: #888; font-style: italic; }
.good { color: #1a7f37; font-weight: bold; }
.bad { color: #b3261e; font-weight: bold; }
.note { color: #555; font-size: .92em; }
pre { background: #f7f7f7; padding: .8em; overflow-x: auto; font-size: .85em; }
nav li { margin: .1em 0; }
"""


# --------------------------------------------------------------------------------------------
# Reading (None where a file does not exist; InputError where it exists but is unreadable)


def _read_json(path: Path) -> Any | None:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(path, f"not a readable JSON file ({exc})") from None


def _read_csv(path: Path) -> tuple[list[str], list[list[str]]] | None:
    if not path.is_file():
        return None
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            rows = list(csv.reader(handle))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise InputError(path, f"not a readable CSV file ({exc})") from None
    if not rows or not rows[0]:
        raise InputError(path, "CSV file without a header row")
    width = len(rows[0])
    for number, row in enumerate(rows[1:], start=2):
        if len(row) != width:
            raise InputError(path, f"line {number} has {len(row)} fields, the header {width}")
    return rows[0], rows[1:]


def _png_bytes(path: Path) -> bytes | None:
    if not path.is_file():
        return None
    data = path.read_bytes()
    if not data.startswith(b"\x89PNG\r\n\x1a\n"):
        raise InputError(path, "is not a PNG image")
    return data


def _metrics_entry(path: Path, content: Any, mse_keys: Sequence[str]) -> dict[str, Any]:
    """The test MSE of one model (dict with n_test_maps, mse_standardised, mse), checked."""
    if not isinstance(content, Mapping):
        raise InputError(path, "must hold a JSON object")
    out: dict[str, Any] = {"n_test_maps": content.get("n_test_maps")}
    for key in mse_keys:
        values = content.get(key)
        if not isinstance(values, Mapping) or not all(n in values for n in NAMES):
            raise InputError(path, f"lacks {key!r} with entries {list(NAMES)}")
        try:
            out[key] = {n: float(values[n]) for n in NAMES}
        except (TypeError, ValueError):
            raise InputError(path, f"{key!r} must hold numbers, got {values!r}") from None
    return out


def read_test_metrics(level_dir: str | os.PathLike) -> dict[str, dict[str, Any]]:
    """Test-split errors of every model of one noise level.

    Reads ``models/*/test_metrics.json`` (backbone, X-DNN, SOP first) and the regressors of
    ``summary_statistics.json``; missing files are skipped.

    Returns
    -------
    dict
        Display name (as in :func:`cosmo_sop.figures.predictions.read_model_predictions`) ->
        ``{"n_test_maps": int | None, "mse_standardised": {"Om", "s8"}, "mse": {"Om", "s8"}}``
        (MSE of standardised and of physical parameters), plus ``"groups"`` for SOP when
        recorded.
    """
    level_dir = Path(level_dir)
    models = level_dir / "models"
    folders = [models / m for m in MODEL_LABELS]
    if models.is_dir():
        folders += sorted(p for p in models.iterdir() if p.is_dir() and p.name not in MODEL_LABELS)
    out: dict[str, dict[str, Any]] = {}
    for folder in folders:
        path = folder / "test_metrics.json"
        content = _read_json(path)
        if content is None:
            continue
        entry = _metrics_entry(path, content, ("mse_standardised", "mse"))
        if isinstance(content.get("groups"), Mapping):
            entry["groups"] = content["groups"]
        out[MODEL_LABELS.get(folder.name, folder.name)] = entry
    path = level_dir / "summary_statistics.json"
    content = _read_json(path)
    if content is not None:
        regressors = content.get("regressors") if isinstance(content, Mapping) else None
        if not isinstance(regressors, Mapping) or not regressors:
            raise InputError(path, "lacks the 'regressors' results")
        n_test = (content.get("n_maps") or {}).get("test")
        for kind, result in regressors.items():
            entry = _metrics_entry(path, result, ("mse_standardised", "mse"))
            entry["n_test_maps"] = n_test
            out[SUMMARY_LABEL.format(kind)] = entry
    return out


def _store_attrs(path: Path) -> dict[str, Any] | None:
    """Attributes of a Zarr store (None if it does not exist)."""
    if not path.exists():
        return None
    return dict(_open_store(path).attrs)


def _open_store(path: Path) -> xr.Dataset:
    try:
        return xr.open_zarr(path, consolidated=True)
    except Exception as exc:  # zarr raises a zoo of types for unreadable stores
        raise InputError(path, f"not a readable Zarr store ({type(exc).__name__}: {exc})") from None


def _config_from_attrs(attrs: Mapping[str, Any], path: Path) -> dict[str, Any] | None:
    text = attrs.get("config")
    if text is None:
        return None
    try:
        return json.loads(text) if isinstance(text, str) else dict(text)
    except (TypeError, ValueError, json.JSONDecodeError):
        raise InputError(path, "attribute 'config' is not a JSON object") from None


# --------------------------------------------------------------------------------------------
# HTML pieces


def _e(text: Any) -> str:
    return html.escape(str(text), quote=True)


def _missing(what: str) -> str:
    return f'<p class="missing">{_e(what)}: {NOT_COMPUTED}.</p>'


def _number(value: Any, digits: int = 4) -> str:
    """A number for a table cell: integers as they are, others with ``digits`` significant."""
    if value is None:
        return "–"
    if isinstance(value, (bool, np.bool_)):
        return str(value)
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    try:
        number = float(value)
    except (TypeError, ValueError):
        return _e(value)
    if math.isnan(number):
        return "–"
    if number.is_integer() and abs(number) < 1e6 and isinstance(value, str) and "." not in value \
            and "e" not in value.lower():
        return str(int(number))
    return f"{number:.{digits}g}"


def _is_number(text: Any) -> bool:
    try:
        float(text)
    except (TypeError, ValueError):
        return False
    return True


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]],
           best: Sequence[set[int]] | None = None, raw_header: bool = False) -> str:
    """An HTML table; cells are escaped (numbers formatted), ``best[i]`` marks cells of row i."""
    head = "".join(f"<th>{h if raw_header else _e(h)}</th>" for h in header)
    body = []
    for i, row in enumerate(rows):
        cells = []
        for j, cell in enumerate(row):
            classes = []
            if cell is None:
                text = "–"
            elif _is_number(cell) and not isinstance(cell, bool):
                classes.append("num")
                text = _number(cell)
            else:
                text = _e(cell)
            if best is not None and j in best[i]:
                classes.append("best")
            attr = f' class="{" ".join(classes)}"' if classes else ""
            cells.append(f"<td{attr}>{text}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _img(data: bytes | None, alt: str) -> str:
    if data is None:
        return _missing(f"Figure '{alt}'")
    encoded = base64.b64encode(data).decode("ascii")
    return f'<img alt="{_e(alt)}" src="data:image/png;base64,{encoded}">'


def _render(plot: Callable[..., Path], *args: Any, **kwargs: Any) -> bytes:
    """PNG bytes of a figure function that writes ``out_png`` (drawn in a temporary folder)."""
    with tempfile.TemporaryDirectory(prefix="cosmo_sop_report_") as folder:
        path = plot(*args, out_png=Path(folder) / "figure.png", **kwargs)
        return Path(path).read_bytes()


def _param(name: str) -> str:
    return DISPLAY.get(name, _e(name))


# --------------------------------------------------------------------------------------------
# Parameter recovery


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


def _ratio_sentence(ratios: Mapping[str, float] | None) -> str:
    if ratios is None:
        return _missing("SOP against its backbone (needs both models' test metrics)")

    def verdict(r: float) -> str:
        if not math.isfinite(r):
            return '<span class="bad">undefined</span>'
        word = "worse" if r >= 1 else "better"
        met = r <= TARGET_RATIO
        return (f"{r:.3f} (SOP {abs(r - 1) * 100:.0f} % {word}; "
                f'<span class="{"good" if met else "bad"}">target {"met" if met else "missed"}'
                f"</span>)")

    parts = "; ".join(f"{_param(n)}: {verdict(ratios[n])}" for n in NAMES)
    return (
        f"<p><b>SOP / backbone test MSE</b> — {parts}; both parameters together (sum of "
        f"standardised MSE): {verdict(ratios['both'])}.<br><span class=\"note\">Target: SOP "
        f"within {100 * (TARGET_RATIO - 1):.0f} % of its backbone (ratio ≤ {TARGET_RATIO:.2f}). "
        f"For comparison, SOP in the SOP paper was {100 * (PAPER_RATIO - 1):.0f} % worse than "
        f"its backbone (ratio {PAPER_RATIO:.2f}). The ratio is the same in standardised and "
        "physical units.</span></p>"
    )


def _recovery_section(level_dir: Path, metrics: Mapping[str, Mapping[str, Any]]) -> str:
    out = ["<h3>(a) Recovering Ω<sub>m</sub> and σ<sub>8</sub></h3>"]
    if not metrics:
        out.append(_missing("Test metrics of the models and of the summary statistics"))
    else:
        backbone = metrics.get(MODEL_LABELS["backbone"])
        header = ["model", "test maps"]
        header += [f"MSE {_param(n)} (standardised)" for n in NAMES]
        header += [f"MSE {_param(n)} (physical)" for n in NAMES]
        header += [f"{_param(n)}: MSE / backbone" for n in NAMES]
        rows, best = [], [set() for _ in metrics]
        for label, entry in metrics.items():
            ratios = [entry["mse_standardised"][n] / backbone["mse_standardised"][n]
                      if backbone and backbone["mse_standardised"][n] > 0 else None for n in NAMES]
            rows.append([label, entry["n_test_maps"],
                         *(entry["mse_standardised"][n] for n in NAMES),
                         *(entry["mse"][n] for n in NAMES), *ratios])
        for column in range(2, 2 + 2 * len(NAMES)):  # bold the lowest MSE of every column
            values = np.array([row[column] for row in rows], dtype=np.float64)
            if np.isfinite(values).any():
                best[int(np.nanargmin(values))].add(column)
        out.append(_table(header, rows, best, raw_header=True))
        out.append('<p class="note">MSE on the test split (cosmologies never seen in training). '
                   "Standardised: parameter minus its train mean, over its train standard "
                   "deviation (1 = always predicting the mean). Bold: lowest per column.</p>")
        out.append(_ratio_sentence(sop_backbone_ratio(metrics)))
    predictions = read_model_predictions(level_dir, NAMES)
    if predictions:
        out.append(_img(_render(plot_predicted_vs_true, predictions, names=NAMES),
                        "predicted vs true"))
    else:
        out.append(_missing("Predicted-vs-true figure (no test_predictions.npz)"))
    return "\n".join(out)


# --------------------------------------------------------------------------------------------
# Faithfulness


def _faithfulness_maps(science: Path, level_dir: Path) -> str:
    """A sentence on the maps of the faithfulness table: attribute ``n_maps`` of
    science/faithfulness.zarr (and the methods it skipped) if recorded, otherwise the size of
    the explanation store the metrics are computed from."""
    attrs = _store_attrs(science / "faithfulness.zarr")
    if attrs and attrs.get("n_maps") is not None:
        text = f"Computed on {_number(attrs['n_maps'])} test maps."
        try:
            skipped = json.loads(attrs.get("skipped") or "{}")
        except (TypeError, json.JSONDecodeError):
            skipped = {}
        if skipped:
            text += f" Methods left out: {json.dumps(skipped)}."
        return text
    store = level_dir / "explanations.zarr"
    if store.exists():
        n = _open_store(store).sizes.get("sample")
        return f"Computed on the maps of the explanation store ({_number(n)} test maps)."
    return "The number of maps is not recorded."


def _faithfulness_section(level_dir: Path) -> str:
    science = level_dir / "science"
    out = ["<h3>(b) Faithfulness of the attributions</h3>"]
    path = science / "faithfulness.csv"
    table = _read_csv(path)
    if table is None:
        out.append(_missing("Faithfulness table (science/faithfulness.csv)"))
    else:
        header, rows = table
        fixed = ["output", "metric", "better"]
        if header[:3] != fixed or len(header) < 4:
            raise InputError(path, f"header must start with {fixed} and name methods, got {header}")
        methods = header[3:]
        out.append(f"<p>{_e(_faithfulness_maps(science, level_dir))} Each "
                   "attribution method ranks pixels (or SOP's groups); the metrics feed the "
                   "model maps changed in that order. Bold: the most faithful method per row "
                   "(by the 'better' column).</p>")
        for output in dict.fromkeys(row[0] for row in rows):
            body, best = [], []
            for _, metric, better, *values in (r for r in rows if r[0] == output):
                numbers = [float(v) if _is_number(v) else math.nan for v in values]
                finite = [x for x in numbers if math.isfinite(x)]
                marked = set()
                if finite and better in ("lower", "higher"):
                    target = min(finite) if better == "lower" else max(finite)
                    marked = {3 + i for i, x in enumerate(numbers) if x == target}
                meaning = METRIC_MEANING.get(metric)
                if meaning is None and metric.startswith("MSE"):
                    meaning = "MSE of the standardised parameter from the top pixels alone"
                body.append([metric, meaning or "", f"{better} is better", *values])
                best.append(marked)
            out.append(f"<h4>{_param(output)}</h4>")
            out.append(_table(["metric", "meaning", "better", *methods], body, best))
    out.append(_img(_png_bytes(science / "faithfulness_curves.png"), "faithfulness curves"))
    return "\n".join(out)


# --------------------------------------------------------------------------------------------
# Voids and clusters


def _flatten(value: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """(key path, leaf) pairs of nested JSON mappings and lists."""
    if isinstance(value, Mapping):
        items = value.items()
    elif isinstance(value, list) and any(isinstance(v, (Mapping, list)) for v in value):
        items = ((str(i), v) for i, v in enumerate(value))
    else:
        return [(prefix, value)]
    out = []
    for key, item in items:
        out += _flatten(item, f"{prefix} / {key}" if prefix else str(key))
    return out


def _outcome(sentence: str) -> str | None:
    for phrase, short in OUTCOMES:
        if phrase in sentence:
            return short
    return None


def _kind_of(sentence: str) -> str | None:
    match = re.match(r"\s*(void|cluster)s\b", sentence)
    return match.group(1) if match else None


def verdict_summary(sentences: Sequence[str]) -> dict[str, dict[str, int]]:
    """Per structure kind, how many verdict sentences agree, disagree, are inconclusive or
    give no verdict (sentences as :func:`cosmo_sop.structures.verdict` writes them)."""
    counts: dict[str, dict[str, int]] = {}
    for sentence in sentences:
        kind, outcome = _kind_of(sentence), _outcome(sentence)
        if kind is None or outcome is None:
            continue
        per_kind = counts.setdefault(kind, {short: 0 for _, short in OUTCOMES})
        per_kind[outcome] += 1
    return counts


def _verdict_sentences(verdicts: Any) -> list[tuple[str, str]]:
    """(definition, sentence) pairs of verdicts.json: its ``"verdicts"`` mapping, or the file's
    own string entries when it is a plain ``{definition: sentence}`` mapping."""
    if isinstance(verdicts, Mapping) and isinstance(verdicts.get("verdicts"), Mapping):
        verdicts = verdicts["verdicts"]
    if not isinstance(verdicts, Mapping):
        return []
    return [(str(key), value) for key, value in verdicts.items() if isinstance(value, str)]


def _bootstrap_note(verdicts: Any) -> str:
    """How the intervals were made, from the settings recorded beside the verdicts."""
    if not isinstance(verdicts, Mapping):
        return ""
    parts = []
    if verdicts.get("n_maps") is not None:
        blocks = verdicts.get("n_blocks")
        kind = verdicts.get("bootstrap_blocks")
        parts.append(f"{_number(verdicts['n_maps'])} maps" + (
            f" resampled in {_number(blocks)} blocks" + (f" (by {kind})" if kind else "")
            if blocks is not None and blocks != verdicts["n_maps"] else " resampled one by one"))
    if verdicts.get("n_boot") is not None:
        parts.append(f"{_number(verdicts['n_boot'])} bootstrap replicates")
    if verdicts.get("confidence") is not None:
        parts.append(f"{100 * float(verdicts['confidence']):g} % intervals")
    if verdicts.get("nonzero_only") is not None:
        parts.append("only groups with non-zero weight" if verdicts["nonzero_only"]
                     else "zero-weight groups included")
    if verdicts.get("smoothing_pixels"):
        parts.append(f"σ map smoothed by {_number(verdicts['smoothing_pixels'])} pixels")
    return f'<p class="note">{_e("; ".join(parts))}.</p>' if parts else ""


def _summary_line(counts: Mapping[str, Mapping[str, int]]) -> str:
    parts = []
    for kind in ("void", "cluster"):
        per_kind = counts.get(kind)
        if not per_kind:
            parts.append(f"{kind}s: no verdict recorded")
            continue
        total = sum(per_kind.values())
        words = ", ".join(f"{n} {short}" for short, n in per_kind.items() if n)
        parts.append(f"{kind}s (paper: {PAPER_FINDING[kind]}): {total} definition"
                     f"{'s' * (total != 1)}: {_e(words)}")
    return "; ".join(parts)


def _purity_section(science: Path) -> str:
    """SOP's purity (purity_sop.json) and every method's (purity.csv), where computed."""
    out = []
    purity = _read_json(science / "purity_sop.json")
    methods = _read_csv(science / "purity.csv")
    if purity is None and methods is None:
        return ""
    out.append("<h4>Purity of the top parts</h4>")
    out.append('<p class="note">Share of a map\'s top groups (for SOP: those with non-zero '
               "weight; for a pixel attribution: connected cells of its top pixels) in their "
               "majority class, void or cluster; about 0.5 is what random groups give, so "
               "compare methods rather than read it against 0.</p>")
    per_output = purity.get("purity") if isinstance(purity, Mapping) else None
    if isinstance(per_output, Mapping) and all(isinstance(v, Mapping) for v in
                                                per_output.values()):
        rows = [[output, v.get("purity"), v.get("ci_low"), v.get("ci_high"), v.get("n_maps")]
                for output, v in per_output.items()]
        out.append("<p>SOP:</p>" + _table(["output", "purity", "CI low", "CI high", "maps"], rows))
    elif purity is not None:
        out.append(_table(["quantity", "value"], [[k, v] for k, v in _flatten(purity)]))
    if methods is not None:
        header, rows = methods
        out.append("<p>All attribution methods:</p>"
                   + _table([h.replace("_", " ") for h in header], rows))
    return "\n".join(out)


def _groups_table(groups: Mapping[str, Any]) -> str:
    nonzero = groups.get("nonzero_groups_per_map") or {}
    size = groups.get("mean_group_size") or {}
    rows = []
    for n in NAMES:
        fraction = size.get(n)
        rows.append([n, nonzero.get(n), None if fraction is None else 100 * float(fraction)])
    text = (f"<p>SOP builds up to {_number(groups.get('n_groups'))} groups per map; on "
            f"{_number(groups.get('n_maps'))} test maps it gives non-zero weight to:</p>")
    return text + _table(["output", "groups with non-zero weight per map",
                          "mean size of those groups (% of the map)"], rows)


def _structures_section(level_dir: Path, metrics: Mapping[str, Mapping[str, Any]]) -> str:
    science = level_dir / "science"
    out = ["<h3>(c) Voids and clusters</h3>",
           '<p class="note">The SOP paper reads its groups as voids and clusters and finds that '
           "voids weigh more for Ω<sub>m</sub> and clusters more for σ<sub>8</sub>. Here every "
           "group of every test map is classified by the mean (or the fraction of pixels) of "
           "the map in units of its own standard deviation σ, and the mean weights of each "
           "class for Ω<sub>m</sub> and σ<sub>8</sub> are compared: a ratio "
           "Ω<sub>m</sub>/σ<sub>8</sub> above 1 means the class weighs more for Ω<sub>m</sub>. "
           "A verdict is given only when the bootstrap interval (maps resampled) excludes 1."
           "</p>"]
    store = level_dir / "explanations.zarr"
    if store.exists():
        sizes = _open_store(store).sizes
        out.append(f"<p>Explanation store: {_number(sizes.get('sample'))} test maps, "
                   f"{_number(sizes.get('group'))} groups each.</p>")
    path = science / "verdicts.json"
    verdicts = _read_json(path)
    if verdicts is None:
        out.append(_missing("Verdicts (science/verdicts.json)"))
    else:
        sentences = _verdict_sentences(verdicts)
        if not sentences:
            raise InputError(path, "holds no verdict sentences")
        out.append(f"<p><b>Does this run agree with the paper?</b> "
                   f"{_summary_line(verdict_summary([s for _, s in sentences]))}.</p>")
        items = "".join(f"<li><b>{_e(key)}</b>: {_e(sentence)}</li>" for key, sentence in sentences)
        out.append(f"<ul>{items}</ul>")
        out.append(_bootstrap_note(verdicts))
    weights = _read_csv(science / "weights.csv")
    if weights is None:
        out.append(_missing("Weight table (science/weights.csv)"))
    else:
        header, rows = weights
        out.append("<h4>Mean group weight per class</h4>")
        out.append(_table([h.replace("_", " ") for h in header], rows))
        out.append('<p class="note">mean weight: mean c<sub>i</sub> of the class\'s groups for '
                   "the output (CI: its interval); mean weight all: the same over all groups; "
                   "ratio: mean weight for Ω<sub>m</sub> over mean weight for σ<sub>8</sub>."
                   "</p>")
    out.append(_purity_section(science))
    out.append(_img(_png_bytes(science / "weight_histograms.png"), "weight histograms"))
    examples = sorted(science.glob("example_groups*.png"),
                      key=lambda p: (len(p.name), p.name))  # example_groups, _2, ..., _10
    if not examples:
        out.append(_missing("Figure 'example groups'"))
    for path in examples:
        out.append(_img(_png_bytes(path), path.stem.replace("_", " ")))
    out.append("<h4>SOP's groups</h4>")
    groups = (metrics.get(MODEL_LABELS["sop"]) or {}).get("groups")
    out.append(_groups_table(groups) if groups else
               _missing("SOP group statistics (models/sop/test_metrics.json)"))
    return "\n".join(out)


# --------------------------------------------------------------------------------------------
# The page


def _anchor(level: str) -> str:
    return "level-" + re.sub(r"[^A-Za-z0-9_-]", "-", level)


def _summary_section(
    results_dir: Path, levels: Sequence[str], metrics: Mapping[str, Mapping[str, Any]],
    config: Mapping[str, Any] | None,
) -> str:
    out = ['<h2 id="summary">Summary across noise levels</h2>']
    table = {level: {label: entry["mse_standardised"] for label, entry in metrics[level].items()}
             for level in levels if metrics[level]}
    if table:
        out.append(_img(_render(plot_mse_per_level, table, names=NAMES), "MSE per noise level"))
    else:
        out.append(_missing("Test errors per noise level"))
    rows = []
    for level in levels:
        ratios = sop_backbone_ratio(metrics[level])
        verdicts = _read_json(results_dir / level / "science" / "verdicts.json")
        counts = (verdict_summary([s for _, s in _verdict_sentences(verdicts)])
                  if verdicts is not None else None)
        glance = (NOT_COMPUTED if counts is None else
                  "; ".join(f"{kind}s: " + ", ".join(f"{n} {short}" for short, n in
                                                     counts[kind].items() if n)
                            for kind in ("void", "cluster") if kind in counts) or "no verdict")
        met = None if ratios is None else ratios["both"] <= TARGET_RATIO
        rows.append([level,
                     *(NOT_COMPUTED if ratios is None else ratios[n] for n in NAMES),
                     NOT_COMPUTED if met is None else ("yes" if met else "no"), glance])
    out.append(_table(["noise level", *(f"SOP/backbone MSE {_param(n)}" for n in NAMES),
                       f"SOP within {100 * (TARGET_RATIO - 1):.0f} % (both)",
                       "void / cluster verdicts"], rows, raw_header=True))
    out.append("<h3>Config used</h3>")
    source = "as passed to the report"
    if config is None:
        for level in levels:
            path = results_dir / level / "patches.zarr"
            attrs = _store_attrs(path)
            if attrs is not None:
                config = _config_from_attrs(attrs, path)
                source = f"from the attributes of {path}"
                break
    if config is None:
        out.append(_missing("Config (no patch store with a 'config' attribute)"))
    else:
        text = json.dumps(config, indent=2, sort_keys=True, default=str)
        out.append(f"<details><summary>Config ({_e(source)})</summary><pre>{_e(text)}</pre>"
                   "</details>")
    noise_rows = []
    for level in levels:
        attrs = _store_attrs(results_dir / level / "patches.zarr")
        if attrs is not None and "noise" in attrs:
            noise_rows.append([level, attrs["noise"], attrs.get("sigma_pix", "")])
    if noise_rows:
        out.append(_table(["noise level", "noise settings", "σ per pixel per bin"], noise_rows,
                          raw_header=True))
    return "\n".join(out)


def write_report(
    results_dir: str | os.PathLike,
    levels: Sequence[str],
    out_html: str | os.PathLike,
    config: Mapping[str, Any] | None = None,
    title: str = "cosmo-sop results",
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

    Returns
    -------
    Path
        ``out_html``.

    Raises
    ------
    InputError
        If ``results_dir`` is not a folder, ``levels`` is empty, or a file that exists cannot be
        read. Parts not computed yet are reported as such.
    """
    results_dir = Path(results_dir)
    if not results_dir.is_dir():
        raise InputError(results_dir, "results folder not found")
    if isinstance(levels, str) or not levels:
        raise InputError("argument 'levels'", f"must be a non-empty list of noise levels, "
                         f"got {levels!r}")
    levels = [str(level) for level in levels]
    metrics = {level: read_test_metrics(results_dir / level) for level in levels}

    nav = "".join(f'<li><a href="#{_anchor(level)}">{_e(level)}</a></li>' for level in levels)
    body = [f"<h1>{_e(title)}</h1>",
            f'<p class="note">Results folder {_e(results_dir.resolve())}; cosmo-sop '
            f"{_e(__version__)}. Parameters: Ω<sub>m</sub> and σ<sub>8</sub>.</p>",
            f'<nav><ul><li><a href="#summary">Summary across noise levels</a></li>{nav}</ul></nav>',
            _summary_section(results_dir, levels, metrics, config)]
    for level in levels:
        level_dir = results_dir / level
        body.append(f'<h2 id="{_anchor(level)}">Noise level: {_e(level)}</h2>')
        if not level_dir.is_dir():
            body.append(_missing(f"Results of noise level {level!r} (no folder {level_dir})"))
            continue
        body.append(_recovery_section(level_dir, metrics[level]))
        body.append(_faithfulness_section(level_dir))
        body.append(_structures_section(level_dir, metrics[level]))

    page = ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            f"<title>{_e(title)}</title>\n<style>{CSS}</style>\n</head>\n<body>\n"
            + "\n".join(body) + "\n</body>\n</html>\n")
    out_html = Path(out_html)
    with atomic_path(out_html) as tmp:
        tmp.write_text(page, encoding="utf-8")
    return out_html
