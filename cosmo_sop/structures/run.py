"""The ``structures`` step of one noise level: voids and clusters among SOP's groups.

Classifies every SOP group as void / cluster by the kappa it covers, weighs the classes for
Omega_m and sigma_8 with bootstrap intervals, records whether the SOP paper's finding (voids
weigh more for Omega_m, clusters for sigma_8) holds, and measures the purity of each map's top
groups. Writes ``weights.csv``, ``verdicts.json``, ``purity_sop.json``,
``weight_histograms.png`` and ``example_groups*.png``.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import xarray as xr
from tqdm.auto import tqdm

from cosmo_sop.attribution.registry import SOP
from cosmo_sop.errors import InputError
from cosmo_sop.explain import kappa_rows, open_explanations, patches_for
from cosmo_sop.figures.structures import plot_groups, plot_weight_histograms
from cosmo_sop.storage import atomic_path, finite_or_none, write_json
from cosmo_sop.structures.classify import (
    PURITY_CLUSTER,
    PURITY_VOID,
    StructureDefinition,
    classify,
    group_labels,
    group_statistics,
    parse_definitions,
    purity_table,
    sigma_map,
    sop_purity,
    verdicts,
    weight_table,
)
from cosmo_sop.training.data import PatchData

MAPS_PER_CHUNK = 256

Blocks = Literal["map", "cosmology"]



def checked_definitions(
    definitions: Sequence[Mapping[str, Any] | StructureDefinition] | None,
) -> tuple[StructureDefinition, ...]:
    if definitions is not None and all(isinstance(d, StructureDefinition) for d in definitions):
        parsed = tuple(definitions)
    else:
        parsed = parse_definitions(definitions)
    kinds = {d.name: d.kind for d in parsed}
    for name, kind in ((PURITY_VOID, "void"), (PURITY_CLUSTER, "cluster")):
        if kinds.get(name) != kind:
            raise InputError(
                "config key 'structures.definitions'",
                f"purity and the figures need a {kind} definition named {name!r}; got {kinds}",
            )
    return parsed


def _blocks(explanations: xr.Dataset, bootstrap_blocks: Blocks) -> np.ndarray | None:
    if bootstrap_blocks == "map":
        return None
    if bootstrap_blocks == "cosmology":
        return np.asarray(explanations["cosmology"].values).astype(str)
    raise InputError("argument 'bootstrap_blocks'", f"must be 'map' or 'cosmology', got {bootstrap_blocks!r}")



# --------------------------------------------------------------------------------------------
# Voids and clusters


def structure_analysis(
    explanations_store: str | os.PathLike,
    patches_store: str | os.PathLike,
    out_dir: str | os.PathLike,
    definitions: Sequence[Mapping[str, Any] | StructureDefinition] | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    nonzero_only: bool = False,
    bootstrap_blocks: Blocks = "map",
    smoothing_pixels: float = 0.0,
    n_examples: int = 3,
) -> dict[str, Any]:
    """Weights of void and cluster groups for Omega_m and sigma_8, and the purity of SOP's groups.

    Parameters
    ----------
    explanations_store
        Written by :func:`cosmo_sop.explain.explain_split`.
    patches_store
        The patch store the explanations were made from (checked): the groups are classified on
        its kappa maps.
    out_dir
        Folder for the outputs (created).
    definitions
        Structure definitions in config form (see :func:`cosmo_sop.structures.parse_definitions`)
        or as :class:`~cosmo_sop.structures.StructureDefinition`; None: the defaults. Must
        include a void named ``"void"`` and a cluster named ``"cluster"`` (purity, figures).
    n_boot, seed
        Bootstrap replicates and their seed (intervals are 95 %).
    nonzero_only
        Average only the groups with weight > 0 for each output (see
        :func:`cosmo_sop.structures.weight_table`); default: all valid groups.
    bootstrap_blocks
        ``"map"``: resample maps; ``"cosmology"``: resample whole cosmologies (the patches of
        one simulation are correlated).
    smoothing_pixels
        Gaussian smoothing (pixels) of the bin-combined map before classifying (0: none).
    n_examples
        Maps drawn with their groups: those with the most groups of non-zero weight.

    Returns
    -------
    dict
        ``n_maps``, ``weights`` (the :func:`~cosmo_sop.structures.weight_table` Dataset),
        ``verdicts`` (definition -> sentence), ``purity_sop`` (output -> mean purity with its
        interval), ``files`` (name -> path). Classes without groups give NaN weights and the
        verdict "no groups in this class"; they do not stop the analysis.

    Notes
    -----
    Writes ``weights.csv`` (one row per definition and output), ``verdicts.json`` (sentences and
    numbers), ``purity_sop.json``, ``weight_histograms.png``/``.pdf``,
    ``example_groups.png`` (then ``example_groups_2.png``, ...)/``.pdf``.
    """
    definitions = checked_definitions(definitions)
    explanations = open_explanations(explanations_store)
    data = patches_for(explanations, explanations_store, patches_store)
    blocks = _blocks(explanations, bootstrap_blocks)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    outputs = [str(o) for o in explanations["output"].values]
    rows = np.asarray(explanations["store_index"].values)
    n_maps = rows.size

    # Group statistics chunk by chunk of maps: masks and sigma maps of a whole split need not
    # fit in memory; the per-group statistics are small.
    pieces = []
    starts = range(0, n_maps, MAPS_PER_CHUNK)
    for start in tqdm(starts, desc="classifying groups", unit="chunk", disable=len(starts) < 2):
        here = slice(start, start + MAPS_PER_CHUNK)
        sigma = sigma_map(kappa_rows(data, rows[here]), smoothing_pixels)
        chunk = explanations.isel(sample=here)
        pieces.append(group_statistics(sigma, chunk["masks"].values, chunk["valid"].values,
                                       definitions))  # fmt: skip
    stats = xr.concat(pieces, dim="sample") if len(pieces) > 1 else pieces[0]
    membership = classify(stats, definitions)
    scores = np.asarray(explanations["scores"].values, dtype=np.float64)
    valid = stats["valid"].values

    table = weight_table(scores, membership, valid, outputs, nonzero_only, n_boot, seed,
                         blocks=blocks)  # fmt: skip
    sentences = verdicts(table)
    purity = purity_table({SOP: sop_purity(scores, membership, valid)}, outputs, n_boot, seed,
                          blocks=blocks).sel({"method": SOP})  # fmt: skip
    purity_sop = {
        output: {
            "purity": finite_or_none(purity["purity"].sel(output=output)),
            "ci_low": finite_or_none(purity["ci_low"].sel(output=output)),
            "ci_high": finite_or_none(purity["ci_high"].sel(output=output)),
            "n_maps": int(purity["n_maps"].sel(output=output)),
        }
        for output in outputs
    }

    files = {
        "weights": _write_weights_csv(table, out_dir / "weights.csv"),
        "verdicts": write_json(out_dir / "verdicts.json", {
            "verdicts": sentences,
            "weights": _weights_json(table),
            "definitions": [d.to_config() for d in definitions],
            "n_maps": int(n_maps),
            "n_blocks": int(table.attrs["n_blocks"]),
            "bootstrap_blocks": bootstrap_blocks,
            "n_boot": int(n_boot),
            "seed": int(seed),
            "confidence": float(table.attrs["confidence"]),
            "nonzero_only": bool(nonzero_only),
            "smoothing_pixels": float(smoothing_pixels),
            "noise_level": str(explanations.attrs.get("noise_level", "")),
            "explanations_store": str(Path(explanations_store).resolve()),
        }),  # fmt: skip
        "purity_sop": write_json(out_dir / "purity_sop.json", {
            "purity": purity_sop,
            "top_groups": "groups with non-zero weight for the output",
            "void": PURITY_VOID, "cluster": PURITY_CLUSTER,
            "n_boot": int(n_boot), "seed": int(seed), "bootstrap_blocks": bootstrap_blocks,
        }),  # fmt: skip
        "weight_histograms": plot_weight_histograms(
            scores, membership, out_dir / "weight_histograms.png", valid, outputs,
            title=f"Weights of SOP groups by structure class ({n_maps} maps, "
            f"{explanations.attrs.get('noise_level', '')})",
        ),  # fmt: skip
    }
    files.update(_plot_examples(explanations, data, scores, valid, group_labels(membership),
                                outputs, n_examples, out_dir))  # fmt: skip
    return {
        "n_maps": int(n_maps),
        "weights": table,
        "verdicts": sentences,
        "purity_sop": purity_sop,
        "files": files,
    }


def _write_weights_csv(table: xr.Dataset, path: Path) -> Path:
    """One row per definition and output: the class's mean weight, interval, count, and ratio."""
    columns = ["definition", "kind", "rule", "output", "mean_weight", "ci_low", "ci_high",
               "n_groups", "mean_weight_all", "ratio_Om_s8", "ratio_low", "ratio_high"]  # fmt: skip
    with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(columns)
        for definition in table["definition"].values:
            row = table.sel(definition=definition)
            for output in table["output"].values:
                cell = row.sel(output=output)
                writer.writerow([
                    definition, str(row["kind"].values), str(row["rule"].values), output,
                    *(f"{float(cell[k]):.6g}" for k in ("mean_weight", "ci_low", "ci_high")),
                    int(cell["n_groups"]),
                    f"{float(table['mean_weight_all'].sel(output=output)):.6g}",
                    *(f"{float(row[k]):.6g}" for k in ("ratio", "ratio_low", "ratio_high")),
                ])  # fmt: skip
    return path


def _weights_json(table: xr.Dataset) -> dict[str, Any]:
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
            }
        entry["ratio"] = {k: finite_or_none(row[f"ratio{s}"]) for k, s in
                          (("value", ""), ("ci_low", "_low"), ("ci_high", "_high"))}  # fmt: skip
        out[str(definition)] = entry
    out["all_groups"] = {str(o): {"mean_weight": finite_or_none(table["mean_weight_all"].sel(output=o))}
                         for o in table["output"].values}  # fmt: skip
    return out


def _plot_examples(
    explanations: xr.Dataset,
    data: PatchData,
    scores: np.ndarray,
    valid: np.ndarray,
    labels: np.ndarray,
    outputs: list[str],
    n_examples: int,
    out_dir: Path,
) -> dict[str, Path]:
    """The maps with the most groups of non-zero weight, their top groups outlined."""
    used = ((scores > 0) & valid[..., None]).sum(axis=(1, 2))
    chosen = np.argsort(-used, kind="stable")[: max(int(n_examples), 0)]
    pixel_scale = data.ds.attrs.get("pixel_scale_arcmin")
    files = {}
    for rank, i in enumerate(chosen.tolist(), start=1):
        one = explanations.isel(sample=i)
        kappa = kappa_rows(data, np.asarray([int(one["store_index"])]))[0]
        truth = ", ".join(f"{o} {float(v):.3g}" for o, v in zip(outputs, one["target"].values))
        guess = ", ".join(f"{o} {float(v):.3g}" for o, v in zip(outputs, one["prediction"].values))
        name = "example_groups" if rank == 1 else f"example_groups_{rank}"
        files[name] = plot_groups(
            kappa, one["masks"].values, scores[i], labels[i], out_dir / f"{name}.png",
            outputs, valid=valid[i], pixel_scale_arcmin=pixel_scale,
            title=f"{one['cosmology'].values} patch {int(one['patch_index'])}: true {truth}; "
            f"SOP predicts {guess}",
        )  # fmt: skip
    return files


