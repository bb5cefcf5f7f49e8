"""What the report reads from a results folder, checked.

Every reader returns None where a file does not exist (the step has not run yet) and raises
:class:`~cosmo_sop.errors.InputError` naming the file where it exists but cannot be read. Paths
come from :mod:`cosmo_sop.layout`.
"""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import xarray as xr

from cosmo_sop import layout
from cosmo_sop.errors import InputError
from cosmo_sop.figures.labels import MODEL_LABELS, summary_label
from cosmo_sop.figures.predictions import model_folders
from cosmo_sop.storage import read_json

#: The parameters, in output order.
NAMES: tuple[str, ...] = ("Om", "s8")
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_bytes(path: Path) -> bytes | None:
    """The bytes of a PNG figure."""
    if not path.is_file():
        return None
    data = path.read_bytes()
    if not data.startswith(_PNG_SIGNATURE):
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

    Parameters
    ----------
    level_dir
        Results folder of one noise level, e.g. ``results/noiseless``.

    Returns
    -------
    dict
        Display name (as in :func:`cosmo_sop.figures.predictions.read_model_predictions`) ->
        ``{"n_test_maps": int | None, "mse_standardised": {"Om", "s8"}, "mse": {"Om", "s8"}}``
        (MSE of standardised and of physical parameters), plus SOP's ``"groups"``, ``"floor"``
        and ``"versus_backbone"`` records (:func:`cosmo_sop.training.train_sop`) when recorded.
        SOP trained at another group size (``sop.sweep_keep_fractions``) is ``"SOP, τ = 0.3"``.
    """
    level_dir = Path(level_dir)
    out: dict[str, dict[str, Any]] = {}
    for folder in model_folders(level_dir):
        path = folder / layout.TEST_METRICS
        content = read_json(path)
        if content is None:
            continue
        entry = _metrics_entry(path, content, ("mse_standardised", "mse"))
        for key in ("groups", "floor", "versus_backbone"):  # SOP's records
            if isinstance(content.get(key), Mapping):
                entry[key] = content[key]
        tau = layout.sweep_keep_fraction(folder.name)
        label = MODEL_LABELS.get(folder.name, folder.name) if tau is None else f"SOP, τ = {tau:g}"
        out[label] = entry
    path = layout.summary_statistics(level_dir.parent, level_dir.name)
    content = read_json(path)
    if content is not None:
        regressors = content.get("regressors") if isinstance(content, Mapping) else None
        if not isinstance(regressors, Mapping) or not regressors:
            raise InputError(path, "lacks the 'regressors' results")
        n_test = (content.get("n_maps") or {}).get("test")
        for kind, result in regressors.items():
            entry = _metrics_entry(path, result, ("mse_standardised", "mse"))
            entry["n_test_maps"] = n_test
            out[summary_label(kind)] = entry
    return out


def open_store(path: Path) -> xr.Dataset:
    """A Zarr store, lazily."""
    try:
        return xr.open_zarr(path, consolidated=True)
    except Exception as exc:  # zarr raises a zoo of types for unreadable stores
        raise InputError(path, f"not a readable Zarr store ({type(exc).__name__}: {exc})") from None


def store_attrs(path: Path) -> dict[str, Any] | None:
    """Attributes of a Zarr store."""
    if not path.exists():
        return None
    return dict(open_store(path).attrs)


def store_sizes(path: Path) -> Mapping[str, int] | None:
    """Dimension sizes of a Zarr store."""
    if not path.exists():
        return None
    return open_store(path).sizes


def config_from_attrs(attrs: Mapping[str, Any], path: Path) -> dict[str, Any] | None:
    """The workflow config a store records in its ``config`` attribute."""
    text = attrs.get("config")
    if text is None:
        return None
    try:
        return json.loads(text) if isinstance(text, str) else dict(text)
    except (TypeError, ValueError, json.JSONDecodeError):
        raise InputError(path, "attribute 'config' is not a JSON object") from None


def read_verdicts(path: Path) -> dict[str, Any] | None:
    """verdicts.json of the structures step: its settings and its ``verdicts`` records, checked.

    The records are those of :func:`cosmo_sop.structures.verdicts`: ``definition``,
    ``kind``, ``rule``, ``n_groups``, ``ratio``, ``ci_low``, ``ci_high``, ``outcome``, ...
    """
    content = read_json(path)
    if content is None:
        return None
    records = content.get("verdicts") if isinstance(content, Mapping) else None
    if not isinstance(records, list) or not records:
        raise InputError(path, "holds no verdict records")
    for key in ("outputs", "confidence", "n_maps", "n_blocks"):
        if key not in content:
            raise InputError(path, f"lacks {key!r} beside the verdict records")
    for record in records:
        if not isinstance(record, Mapping) or not {"definition", "outcome"} <= set(record):
            raise InputError(path, f"a verdict record lacks 'definition' or 'outcome': {record!r}")
    return content


# -- the jobs' benchmark records (layout.benchmark) --------------------------------------------

#: The columns of Snakemake's benchmark record the report reads (a record has more).
BENCHMARK_COLUMNS: tuple[str, ...] = ("s", "max_rss")
#: How Snakemake writes a value it did not measure.
_NOT_MEASURED = ("NA", "-", "")


@dataclass(frozen=True)
class JobTime:
    """One job's benchmark record: its rule (the record's folder), its file, its wall seconds
    and its peak resident memory in MiB (None where Snakemake took no sample: a job that
    ended first)."""

    rule: str
    path: Path
    seconds: float
    max_rss_mib: float | None


def benchmark_files(results: str | os.PathLike) -> list[Path]:
    """Every job's benchmark record under a results folder (:func:`cosmo_sop.layout.benchmark`:
    ``benchmarks/<rule>/<job>.tsv``), sorted; empty if there is none."""
    return sorted(layout.benchmarks(results).glob("*/*.tsv"))


def _measured(path: Path, line: int, column: str, text: str) -> float | None:
    """A number of a benchmark record; None for one not measured."""
    if text.strip() in _NOT_MEASURED:
        return None
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < 0:
        raise InputError(path, f"line {line}: {column!r} is {text!r}, not a number of at least 0")
    return value


def read_benchmark(path: str | os.PathLike) -> JobTime:
    """One job's benchmark record, as Snakemake writes it for a rule's ``benchmark:``.

    A tab-separated header and one row per run of the job (Snakemake's ``repeat()``; one
    here): ``s`` (wall seconds), ``h:m:s``, ``max_rss`` (MiB), ... The job's seconds are the sum
    over its rows, its memory the largest.

    Parameters
    ----------
    path
        The record, ``results/benchmarks/<rule>/<job>.tsv``: the rule is its folder's name.

    Returns
    -------
    JobTime

    Raises
    ------
    InputError
        Naming the file, if it is missing or not a benchmark record: unreadable, no header
        with the columns :data:`BENCHMARK_COLUMNS`, no row, a row of another width, a value
        that is not a number.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "benchmark record not found")
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            rows = list(csv.reader(handle, delimiter="\t"))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise InputError(path, f"not a readable benchmark record ({exc})") from None
    header = rows[0] if rows else []
    missing = [column for column in BENCHMARK_COLUMNS if column not in header]
    if missing:
        raise InputError(
            path, f"not a Snakemake benchmark record: its header lacks the columns {missing}"
        )
    if len(rows) < 2:
        raise InputError(path, "benchmark record without a row (the job did not finish?)")
    seconds, memory = 0.0, []
    for line, row in enumerate(rows[1:], start=2):
        if len(row) != len(header):
            raise InputError(path, f"line {line} has {len(row)} fields, the header {len(header)}")
        values = dict(zip(header, row))
        wall = _measured(path, line, "s", values["s"])
        if wall is None:
            raise InputError(path, f"line {line}: no wall time 's'")
        seconds += wall
        rss = _measured(path, line, "max_rss", values["max_rss"])
        if rss is not None:
            memory.append(rss)
    return JobTime(layout.benchmark_rule(path), path, seconds, max(memory) if memory else None)


def read_benchmarks(paths: Iterable[str | os.PathLike]) -> list[JobTime]:
    """The benchmark records ``paths`` (:func:`read_benchmark`), in their order."""
    return [read_benchmark(path) for path in paths]
