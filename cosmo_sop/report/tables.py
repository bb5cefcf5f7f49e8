"""Tables, numbers and figures as plain data for the report's template.

A table is ``{"header": [str], "rows": [[{"text": str, "classes": str}]]}``: numbers (and
numeric strings from CSV files) are formatted here and get the class ``num``, the best cell of a
row the class ``best``. A figure is ``{"alt": str, "src": str | None}`` (a base64 data URL, None
for a figure not computed). The template escapes every text.
"""

from __future__ import annotations

import base64
import math
import tempfile
from collections.abc import Callable, Collection, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

#: How a cell without a value reads.
NO_VALUE = "–"
#: How a part of the report that a run has not (yet) produced reads.
NOT_COMPUTED = "not computed"


def number(value: Any, digits: int = 4) -> str:
    """A number for a table cell: integers as they are, others with ``digits`` significant."""
    if value is None:
        return NO_VALUE
    if isinstance(value, bool | np.bool_):
        return str(value)
    if isinstance(value, int | np.integer):
        return str(int(value))
    try:
        number = float(value)
    except (TypeError, ValueError):
        return str(value)
    if math.isnan(number):
        return NO_VALUE
    # An integer written in a CSV file ("30") stays an integer.
    if (
        number.is_integer()
        and abs(number) < 1e6
        and isinstance(value, str)
        and "." not in value
        and "e" not in value.lower()
    ):
        return str(int(number))
    return f"{number:.{digits}g}"


def is_number(value: Any) -> bool:
    """Whether ``value`` reads as a number (a float, an int, a numeric string)."""
    try:
        float(value)
    except (TypeError, ValueError):
        return False
    return True


def _cell(value: Any, best: bool) -> dict[str, str]:
    classes = []
    if value is None:
        text = NO_VALUE
    elif is_number(value) and not isinstance(value, bool):
        classes.append("num")
        text = number(value)
    else:
        text = str(value)
    if best:
        classes.append("best")
    return {"text": text, "classes": " ".join(classes)}


def table(
    header: Sequence[str],
    rows: Sequence[Sequence[Any]],
    best: Sequence[Collection[int]] | None = None,
) -> dict[str, Any]:
    """A table of ``rows`` under ``header``; ``best[i]`` are the columns marked best in row i."""
    return {
        "header": [str(h) for h in header],
        "rows": [
            [_cell(value, best is not None and j in best[i]) for j, value in enumerate(row)]
            for i, row in enumerate(rows)
        ],
    }


def figure(data: bytes | None, alt: str) -> dict[str, str | None]:
    """A PNG figure, inline."""
    if data is None:
        return {"alt": alt, "src": None}
    return {"alt": alt, "src": "data:image/png;base64," + base64.b64encode(data).decode("ascii")}


def drawn(plot: Callable[..., Path], *args: Any, **kwargs: Any) -> bytes:
    """PNG bytes of a figure function that writes ``out_png`` (drawn in a temporary folder)."""
    with tempfile.TemporaryDirectory(prefix="cosmo_sop_report_") as folder:
        path = plot(*args, out_png=Path(folder) / "figure.png", **kwargs)
        return Path(path).read_bytes()


def flatten(value: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """(key path, leaf) pairs of nested JSON mappings and lists."""
    if isinstance(value, Mapping):
        items = value.items()
    elif isinstance(value, list) and any(isinstance(v, Mapping | list) for v in value):
        items = ((str(i), v) for i, v in enumerate(value))
    else:
        return [(prefix, value)]
    out = []
    for key, item in items:
        out += flatten(item, f"{prefix} / {key}" if prefix else str(key))
    return out


# -- the faithfulness summary (science/faithfulness.csv) ---------------------------------------

#: Columns of the faithfulness summary that the report reads.
FAITHFULNESS_COLUMNS = (
    "method",
    "resolution",
    "scorer",
    "output",
    "metric",
    "better",
    "mean",
    "ci_low",
    "ci_high",
    "sop_minus",
    "diff_ci_low",
    "diff_ci_high",
    "diff_p_adjusted",
    "significant",
)
#: How the report names the methods, resolutions and scoring models of the summary.
METHOD_NAMES = {
    "sop": "SOP",
    "integrated_gradients": "Integrated Gradients",
    "gradient_shap": "GradientSHAP",
    "kernel_shap": "KernelSHAP",
    "lime": "LIME",
    "saliency": "Saliency",
    "x_gradient": "X-Gradient",
}
RESOLUTION_NAMES = {"pixel": "per pixel", "token": "per token"}
SCORER_NAMES = {"backbone": "backbone", "sop": "SOP model", "xdnn": "X-DNN"}


def with_interval(mean: str, low: str, high: str) -> str:
    """``"0.33 [0.30, 0.36]"``, or the no-value mark."""
    if not is_number(mean) or math.isnan(float(mean)):
        return NO_VALUE
    return f"{number(mean)} [{number(low)}, {number(high)}]"


def entry_name(method: str, resolution: str, scorer: str) -> str:
    """E.g. ``"Integrated Gradients, per token (on backbone)"``; SOP has no resolution."""
    name = METHOD_NAMES.get(method, method)
    if method != "sop":
        name += f", {RESOLUTION_NAMES.get(resolution, resolution)}"
    return f"{name} (on {SCORER_NAMES.get(scorer, scorer)})"


def faithfulness_tables(
    header: Sequence[str], rows: Sequence[Sequence[str]], output: str
) -> dict[str, Any]:
    """Two tables of one output: each entry's mean [95 % CI] per metric, and the paired
    difference SOP − entry [95 % CI], bold only where the summary calls it significant (its
    p-value adjusted over the whole table below 0.05)."""
    index = {name: header.index(name) for name in FAITHFULNESS_COLUMNS}
    mine = [r for r in rows if r[index["output"]] == output]
    metrics = list(dict.fromkeys(r[index["metric"]] for r in mine))
    better = {r[index["metric"]]: r[index["better"]] for r in mine}
    keys = list(
        dict.fromkeys(tuple(r[index[k]] for k in ("method", "resolution", "scorer")) for r in mine)
    )
    cells = {
        (tuple(r[index[k]] for k in ("method", "resolution", "scorer")), r[index["metric"]]): r
        for r in mine
    }
    means, diffs, bold = [], [], []
    for key in keys:
        got = [cells.get((key, m)) for m in metrics]
        means.append(
            [entry_name(*key)]
            + [
                NO_VALUE
                if r is None
                else with_interval(*(r[index[k]] for k in ("mean", "ci_low", "ci_high")))
                for r in got
            ]
        )
        if key[0] == "sop":
            continue
        row, marked = [entry_name(*key)], set()
        for j, r in enumerate(got, start=1):
            triple = (
                (NO_VALUE,) * 3
                if r is None
                else tuple(r[index[k]] for k in ("sop_minus", "diff_ci_low", "diff_ci_high"))
            )
            row.append(with_interval(*triple))
            if r is not None and r[index["significant"]] == "true":
                marked.add(j)
        diffs.append(row)
        bold.append(marked)
    head = [f"{m} ({better[m]} is better)" for m in metrics]
    return {
        "means": table(["entry", *head], means),
        "differences": table(["SOP − entry", *metrics], diffs, bold),
    }
