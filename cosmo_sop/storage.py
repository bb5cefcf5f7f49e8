"""Storage: atomic writes, Zarr stores, and the one JSON and one CSV writer.

Atomic writes: an output appears at its final path only once it is complete.

An interrupted run (Ctrl-C, a killed SLURM job, a full disk) must never leave a file or a Zarr
store that a rerun would take for finished work, so every writer in cosmo-sop writes to a hidden
sibling first and renames it into place at the end. A rename within one directory is atomic on
POSIX file systems.
"""

from __future__ import annotations

import contextlib
import csv
import json
import math
import os
import shutil
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from cosmo_sop.errors import InputError

#: Zarr format of every store cosmo-sop writes. Version 2 keeps string coordinates and
#: consolidated metadata within a published specification, so other tools can read the stores.
ZARR_FORMAT = 2


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary sibling of ``path`` and move it onto ``path`` when the block succeeds.

    Works for files and directories (Zarr stores) alike. If the block raises, the temporary
    output is removed and ``path`` is left exactly as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    _remove(tmp)
    try:
        yield tmp
    except BaseException:
        _remove(tmp)
        raise
    _remove(path)
    os.replace(tmp, path)


def write_zarr(ds: xr.Dataset, path: str | os.PathLike, **to_zarr_kwargs) -> Path:
    """Write ``ds`` to a Zarr store at ``path`` atomically and return the path.

    Dask-backed variables are computed while writing, chunk by chunk, so the dataset never has
    to fit in memory.
    """
    with atomic_path(path) as tmp:
        ds.to_zarr(tmp, mode="w", zarr_format=ZARR_FORMAT, consolidated=True, **to_zarr_kwargs)
    return Path(path)


def open_zarr(path: str | os.PathLike, variables: tuple[str, ...] = ()) -> xr.Dataset:
    """Open a cosmo-sop Zarr store lazily, with a clear error if it is missing or incomplete."""
    path = Path(path)
    if not path.exists():
        raise InputError(path, "Zarr store not found (run the step that writes it first)")
    try:
        ds = xr.open_zarr(path, consolidated=True)
    except Exception as exc:  # zarr raises a zoo of types for unreadable stores
        raise InputError(path, f"not a readable Zarr store ({type(exc).__name__}: {exc})") from None
    missing = [v for v in variables if v not in ds.variables]
    if missing:
        raise InputError(path, f"Zarr store lacks variable(s) {', '.join(missing)}")
    return ds


# --------------------------------------------------------------------------------------------
# Records: the one JSON writer and the one CSV writer of cosmo-sop (and their readers)


def finite_or_none(value: Any) -> float | None:
    """A float for JSON: None for NaN or infinity (JSON has no NaN)."""
    value = float(value)
    return value if math.isfinite(value) else None


def _jsonable(value: Any) -> Any:
    """What :mod:`json` cannot encode by itself: numpy scalars and arrays, tensors, paths."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray) or hasattr(value, "tolist"):  # also torch.Tensor
        return value.tolist()
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def json_text(content: Any, *, indent: int | None = 2, sort_keys: bool = False) -> str:
    """``content`` as strict JSON text (NaN and infinity refused: pass them through
    :func:`finite_or_none`); numpy values, tensors and paths are converted."""
    return json.dumps(
        content, indent=indent, sort_keys=sort_keys, allow_nan=False, default=_jsonable
    )


def write_json(path: str | os.PathLike, content: Any, *, sort_keys: bool = False) -> Path:
    """Write ``content`` as indented JSON (see :func:`json_text`) atomically; returns the path."""
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(json_text(content, sort_keys=sort_keys) + "\n", encoding="utf-8")
    return path


def read_json(path: str | os.PathLike) -> Any | None:
    """The content of a JSON file; None if it does not exist, InputError if it is unreadable."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(path, f"not a readable JSON file ({exc})") from None


def write_csv(
    path: str | os.PathLike, header: Sequence[str], rows: Iterable[Sequence[Any]]
) -> Path:
    """Write a header row and ``rows`` (values as given: format floats before) atomically."""
    path = Path(path)
    with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def read_csv(path: str | os.PathLike) -> tuple[list[str], list[list[str]]] | None:
    """(header, rows) of a CSV file; None if it does not exist, InputError if it is unreadable
    or ragged."""
    path = Path(path)
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
