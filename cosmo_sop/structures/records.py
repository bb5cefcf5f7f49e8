"""The structures step's records: ``weights.csv``, ``verdicts.json`` and ``purity_sop.json``.

Numbers only (the report puts them into words). ``verdicts.json`` holds the settings the
verdicts were made with (``bootstrap_blocks``: ``"cosmology"`` by default), the trained SOP's
weights, the nulls' weights (``null_weights``), and one record per definition: the fields of
:func:`~cosmo_sop.structures.verdict` with the nulls' ratios, the paired tests and the findings
of :func:`~cosmo_sop.structures.findings.assess`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from cosmo_sop.storage import finite_or_none, write_csv
from cosmo_sop.structures.definitions import (
    PURITY_CLUSTER,
    PURITY_VOID,
    StructureDefinition,
    mean_bound,
)

#: Columns of ``weights.csv``: one row per definition and output.
WEIGHTS_COLUMNS = (
    "definition",
    "kind",
    "rule",
    "output",
    "mean_weight",
    "ci_low",
    "ci_high",
    "n_groups",
    "n_contributing",
    "mean_weight_all",
    "ratio_Om_s8",
    "ratio_low",
    "ratio_high",
    "dropped_replicates",
)


def verdicts_content(
    table: xr.Dataset,
    records: list[dict[str, Any]],
    definitions: Sequence[StructureDefinition],
    settings: Mapping[str, Any],
    explanations: xr.Dataset,
    explanations_store: str | os.PathLike,
    null_tables: Mapping[str, xr.Dataset],
    stats: xr.Dataset,
) -> dict[str, Any]:
    """verdicts.json: the settings the verdicts were made with, the weights, the records, and
    the share of the pixels SOP's groups hold with the bound it puts on their mean
    (:func:`group_pixel_fractions`; ``stats`` from
    :func:`~cosmo_sop.structures.classes.group_statistics` of the explained groups)."""
    map_pixels = int(np.prod(explanations["masks"].shape[-2:]))
    return {
        "outputs": [str(o) for o in table["output"].values],
        "confidence": float(table.attrs["confidence"]),
        "n_maps": int(table.attrs["n_maps"]),
        "n_blocks": int(table.attrs["n_blocks"]),
        "bootstrap_blocks": settings["bootstrap_blocks"],
        "min_blocks": settings["min_blocks"],
        "n_boot": settings["n_boot"],
        "seed": settings["seed"],
        "nonzero_only": settings["nonzero_only"],
        "smoothing_pixels": settings["smoothing_pixels"],
        "noise_level": str(explanations.attrs.get("noise_level", "")),
        "explanations_store": str(Path(explanations_store).resolve()),
        "definitions": [d.to_config() for d in definitions],
        "nulls": list(null_tables),
        "null_notes": settings.get("null_notes", {}),
        "finding_rule": FINDING_RULE,
        "weights": weights_json(table),
        "null_weights": {name: weights_json(t) for name, t in null_tables.items()},
        "group_pixels": group_pixel_fractions(stats, map_pixels),
        "verdicts": records,
    }


def group_pixel_fractions(stats: xr.Dataset, map_pixels: int) -> dict[str, float | None]:
    """The share of a map's pixels in SOP's valid groups (5th, 50th and 95th percentile) and the
    largest mean in sigma a group of that share can have (:func:`mean_bound`; the smallest
    share bounds the mean the highest)."""
    pixels = stats["pixels"].values[stats["valid"].values]
    if pixels.size == 0:
        return {"p05": None, "median": None, "p95": None, "bound_low": None, "bound_high": None}
    p05, median, p95 = np.percentile(pixels / map_pixels, [5, 50, 95])
    return {
        "p05": float(p05),
        "median": float(median),
        "p95": float(p95),
        "bound_low": finite_or_none(mean_bound(p95)),
        "bound_high": finite_or_none(mean_bound(p05)),
    }


#: The rule of :func:`~cosmo_sop.structures.findings.assess`, as verdicts.json records it.
FINDING_RULE = (
    "per class and hypothesis (selector: trained SOP against uniform scores on its groups; "
    "groups: against random groups scored by the trained selector), the bootstrap replicates of "
    "log(SOP ratio) - log(null ratio) on the same resampled cosmologies give a one-sided p-value "
    "on the side the paper predicts (voids: Om heavier; clusters: s8 heavier); the p-values of "
    "the run are Holm-adjusted together; finding = adjusted p < 1 - confidence; a verdict's "
    "finding is its selector hypothesis's"
)


def purity_content(
    purity: Mapping[str, Any], group_purity: Mapping[str, Any], settings: Mapping[str, Any]
) -> dict[str, Any]:
    """purity_sop.json: SOP's purity per output by the rule of every method (cells of its top
    pixels), its group purity, what they count, and the bootstrap settings."""
    return {
        "purity": purity,
        "parts": "cells of the top 20% pixels of the summed group weights (every method's rule)",
        "group_purity": group_purity,
        "top_groups": "groups with non-zero weight for the output",
        "void": PURITY_VOID,
        "cluster": PURITY_CLUSTER,
        "n_boot": settings["n_boot"],
        "seed": settings["seed"],
        "bootstrap_blocks": settings["bootstrap_blocks"],
    }


def write_weights_csv(table: xr.Dataset, path: Path) -> Path:
    """One row per definition and output: the class's mean weight, interval, count of groups
    and of the blocks (cosmologies) holding them, and the ratio with its interval and the share
    of bootstrap replicates without the class."""
    rows = []
    for definition in table["definition"].values:
        row = table.sel(definition=definition)
        ratio = [
            f"{float(row[k]):.6g}"
            for k in ("ratio", "ratio_low", "ratio_high", "dropped_replicates")
        ]
        for output in table["output"].values:
            cell = row.sel(output=output)
            rows.append(
                [
                    definition,
                    str(row["kind"].values),
                    str(row["rule"].values),
                    output,
                    *(f"{float(cell[k]):.6g}" for k in ("mean_weight", "ci_low", "ci_high")),
                    int(cell["n_groups"]),
                    int(cell["n_contributing"]),
                    f"{float(table['mean_weight_all'].sel(output=output)):.6g}",
                    *ratio,
                ]
            )
    return write_csv(path, WEIGHTS_COLUMNS, rows)


def weights_json(table: xr.Dataset) -> dict[str, Any]:
    """Definition -> kind, rule, per-output mean weight with interval and count, and the ratio;
    ``all_groups``: the mean weight of all groups per output."""
    out: dict[str, Any] = {}
    for definition in table["definition"].values:
        row = table.sel(definition=definition)
        entry: dict[str, Any] = {"kind": str(row["kind"].values), "rule": str(row["rule"].values)}
        for output in table["output"].values:
            cell = row.sel(output=output)
            entry[str(output)] = {
                "mean_weight": finite_or_none(cell["mean_weight"]),
                "ci_low": finite_or_none(cell["ci_low"]),
                "ci_high": finite_or_none(cell["ci_high"]),
                "n_groups": int(cell["n_groups"]),
                "n_contributing": int(cell["n_contributing"]),
            }
        entry["ratio"] = {
            "value": finite_or_none(row["ratio"]),
            "ci_low": finite_or_none(row["ratio_low"]),
            "ci_high": finite_or_none(row["ratio_high"]),
            "dropped_replicates": finite_or_none(row["dropped_replicates"]),
        }
        out[str(definition)] = entry
    out["all_groups"] = {
        str(o): {
            "mean_weight": finite_or_none(table["mean_weight_all"].sel(output=o)),
            "score_evenness": finite_or_none(table["score_evenness"].sel(output=o)),
        }
        for o in table["output"].values
    }
    return out
