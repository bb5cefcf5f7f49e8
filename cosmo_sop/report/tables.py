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
