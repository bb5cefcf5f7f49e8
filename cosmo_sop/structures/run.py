"""The ``structures`` step of one noise level: voids and clusters among SOP's groups.

Classifies every SOP group as void / cluster by the kappa it covers, weighs the classes for
Omega_m and sigma_8 with bootstrap intervals, records whether the SOP paper's finding (voids
weigh more for Omega_m, clusters for sigma_8) holds, and measures the purity of each map's top
groups. Writes, into the level's science folder (:func:`cosmo_sop.layout.science_dir`),
``weights.csv``, ``verdicts.json``, ``purity_sop.json``, ``weight_histograms.png`` and
``example_groups*.png``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr
from tqdm.auto import tqdm

from cosmo_sop.attribution.registry import SOP
from cosmo_sop.errors import InputError
from cosmo_sop.explain import kappa_rows, open_explanations, patches_for
from cosmo_sop.figures.structures import plot_groups, plot_weight_histograms
from cosmo_sop.layout import EXAMPLE_GROUPS, PURITY_SOP, VERDICTS, WEIGHT_HISTOGRAMS, WEIGHTS_CSV
from cosmo_sop.storage import finite_or_none, write_csv, write_json
from cosmo_sop.structures.classes import classify, group_labels, group_statistics, sigma_map
from cosmo_sop.structures.definitions import (
    PURITY_CLUSTER,
    PURITY_VOID,
    StructureDefinition,
    checked_definitions,
)
from cosmo_sop.structures.purity import purity_table, sop_purity
from cosmo_sop.structures.weights import verdicts, weight_table
from cosmo_sop.training.data import PatchData

#: Maps whose masks and sigma maps are in memory at a time while classifying.
MAPS_PER_CHUNK = 256

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
    "mean_weight_all",
    "ratio_Om_s8",
    "ratio_low",
    "ratio_high",
)


def run(
    config: Mapping[str, Any],
    *,
    explanations: str | os.PathLike,
    patches: str | os.PathLike,
    out_dir: str | os.PathLike,
    smoothing_pixels: float = 0.0,
    n_examples: int = 3,
) -> dict[str, Any]:
    """Weights of void and cluster groups for Omega_m and sigma_8, and the purity of SOP's groups.

    Parameters
    ----------
    config
        The validated config (:func:`cosmo_sop.config.validate_config`); reads ``seed`` and
        ``structures``: ``definitions`` (must include a void named ``"void"`` and a cluster
        named ``"cluster"``, for purity and the figures), ``n_boot`` (bootstrap replicates;
        intervals are 95 %), ``nonzero_only`` (average only groups with weight > 0, see
        :func:`cosmo_sop.structures.weight_table`) and ``bootstrap_blocks`` (``"map"``:
        resample maps; ``"cosmology"``: whole cosmologies, whose patches are correlated).
    explanations
        Explanation store written by :func:`cosmo_sop.explain.explain_split`.
    patches
        The patch store the explanations were made from (checked): the groups are classified on
        its kappa maps.
    out_dir
        Folder for the outputs (created).
    smoothing_pixels
        Gaussian smoothing (sigma in pixels) of the bin-combined map before classifying (0:
        none, as the workflow runs it).
    n_examples
        Maps drawn with their groups: those with the most groups of non-zero weight.

    Returns
    -------
    dict
        ``n_maps``, ``weights`` (the :func:`~cosmo_sop.structures.weight_table` Dataset),
        ``verdicts`` (the records of :func:`~cosmo_sop.structures.verdict`, one per definition),
        ``purity_sop`` (output -> mean purity with its interval), ``files`` (name -> path).
        Classes without groups give NaN weights and the outcome ``"no_groups"``; they do not
        stop the analysis.

    Notes
    -----
    Writes ``weights.csv`` (one row per definition and output), ``verdicts.json`` (the settings,
    the weights and the verdict records), ``purity_sop.json``, ``weight_histograms.png``/``.pdf``,
    ``example_groups.png`` (then ``example_groups_2.png``, ...)/``.pdf``.
    """
    settings = _settings(config, smoothing_pixels)
    definitions = checked_definitions(config["structures"]["definitions"])
    explained = open_explanations(explanations)
    data = patches_for(explained, explanations, patches)
    blocks = _blocks(explained, settings["bootstrap_blocks"])
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    stats = _group_statistics(explained, data, definitions, settings["smoothing_pixels"])
    membership = classify(stats, definitions)
    scores = np.asarray(explained["scores"].values, dtype=np.float64)
    valid = stats["valid"].values
    table, purity = _weigh(scores, membership, valid, explained, settings, blocks)
    records = verdicts(table)

    content = _verdicts_content(table, records, definitions, settings, explained, explanations)
    files = {
        "weights": write_weights_csv(table, out_dir / WEIGHTS_CSV),
        "verdicts": write_json(out_dir / VERDICTS, content),
        "purity_sop": write_json(out_dir / PURITY_SOP, _purity_content(purity, settings)),
        "weight_histograms": _plot_histograms(scores, membership, valid, explained, out_dir),
    }
    labels = group_labels(membership)
    files.update(_plot_examples(explained, data, scores, valid, labels, n_examples, out_dir))
    return {
        "n_maps": int(scores.shape[0]),
        "weights": table,
        "verdicts": records,
        "purity_sop": purity,
        "files": files,
    }


def _settings(config: Mapping[str, Any], smoothing_pixels: float) -> dict[str, Any]:
    """The bootstrap and classification settings of the step, as verdicts.json records them."""
    options = config["structures"]
    return {
        "n_boot": int(options["n_boot"]),
        "seed": int(config["seed"]),
        "nonzero_only": bool(options["nonzero_only"]),
        "bootstrap_blocks": options["bootstrap_blocks"],
        "smoothing_pixels": float(smoothing_pixels),
    }


def _blocks(explanations: xr.Dataset, bootstrap_blocks: str) -> np.ndarray | None:
    """The resampling block of every map: None (each map its own) or its cosmology."""
    if bootstrap_blocks == "map":
        return None
    if bootstrap_blocks == "cosmology":
        return np.asarray(explanations["cosmology"].values).astype(str)
    raise InputError(
        "config key 'structures.bootstrap_blocks'",
        f"must be 'map' or 'cosmology', got {bootstrap_blocks!r}",
    )


def _group_statistics(
    explanations: xr.Dataset,
    data: PatchData,
    definitions: tuple[StructureDefinition, ...],
    smoothing_pixels: float,
) -> xr.Dataset:
    """:func:`~cosmo_sop.structures.group_statistics` of every explained map."""
    # Chunk by chunk of maps: masks and sigma maps of a whole split need not fit in memory; the
    # per-group statistics are small.
    rows = np.asarray(explanations["store_index"].values)
    pieces = []
    starts = range(0, rows.size, MAPS_PER_CHUNK)
    for start in tqdm(starts, desc="classifying groups", unit="chunk", disable=len(starts) < 2):
        here = slice(start, start + MAPS_PER_CHUNK)
        sigma = sigma_map(kappa_rows(data, rows[here]), smoothing_pixels)
        chunk = explanations.isel(sample=here)
        masks, valid = chunk["masks"].values, chunk["valid"].values
        pieces.append(group_statistics(sigma, masks, valid, definitions))
    return xr.concat(pieces, dim="sample") if len(pieces) > 1 else pieces[0]


def _weigh(
    scores: np.ndarray,
    membership: xr.DataArray,
    valid: np.ndarray,
    explanations: xr.Dataset,
    settings: Mapping[str, Any],
    blocks: np.ndarray | None,
) -> tuple[xr.Dataset, dict[str, dict[str, Any]]]:
    """The weight table of the classes, and output -> mean purity of SOP's top groups with its
    interval and the number of maps it is defined on."""
    outputs = [str(o) for o in explanations["output"].values]
    n_boot, seed = settings["n_boot"], settings["seed"]
    table = weight_table(
        scores, membership, valid, outputs, settings["nonzero_only"], n_boot, seed, blocks=blocks
    )
    purities = {SOP: sop_purity(scores, membership, valid)}
    purity = purity_table(purities, outputs, n_boot, seed, blocks=blocks).sel({"method": SOP})
    by_output = {
        output: {
            "purity": finite_or_none(purity["purity"].sel(output=output)),
            "ci_low": finite_or_none(purity["ci_low"].sel(output=output)),
            "ci_high": finite_or_none(purity["ci_high"].sel(output=output)),
            "n_maps": int(purity["n_maps"].sel(output=output)),
        }
        for output in outputs
    }
    return table, by_output


def _verdicts_content(
    table: xr.Dataset,
    records: list[dict[str, Any]],
    definitions: tuple[StructureDefinition, ...],
    settings: Mapping[str, Any],
    explanations: xr.Dataset,
    explanations_store: str | os.PathLike,
) -> dict[str, Any]:
    """verdicts.json: the settings the verdicts were made with, the weights, the records."""
    return {
        "outputs": [str(o) for o in table["output"].values],
        "confidence": float(table.attrs["confidence"]),
        "n_maps": int(table.attrs["n_maps"]),
        "n_blocks": int(table.attrs["n_blocks"]),
        "bootstrap_blocks": settings["bootstrap_blocks"],
        "n_boot": settings["n_boot"],
        "seed": settings["seed"],
        "nonzero_only": settings["nonzero_only"],
        "smoothing_pixels": settings["smoothing_pixels"],
        "noise_level": str(explanations.attrs.get("noise_level", "")),
        "explanations_store": str(Path(explanations_store).resolve()),
        "definitions": [d.to_config() for d in definitions],
        "weights": _weights_json(table),
        "verdicts": records,
    }


def _purity_content(purity: dict[str, Any], settings: Mapping[str, Any]) -> dict[str, Any]:
    """purity_sop.json: SOP's purity per output, what it counts, and the bootstrap settings."""
    return {
        "purity": purity,
        "top_groups": "groups with non-zero weight for the output",
        "void": PURITY_VOID,
        "cluster": PURITY_CLUSTER,
        "n_boot": settings["n_boot"],
        "seed": settings["seed"],
        "bootstrap_blocks": settings["bootstrap_blocks"],
    }


def write_weights_csv(table: xr.Dataset, path: Path) -> Path:
    """One row per definition and output: the class's mean weight, interval, count, and ratio."""
    rows = []
    for definition in table["definition"].values:
        row = table.sel(definition=definition)
        ratio = [f"{float(row[k]):.6g}" for k in ("ratio", "ratio_low", "ratio_high")]
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
                    f"{float(table['mean_weight_all'].sel(output=output)):.6g}",
                    *ratio,
                ]
            )
    return write_csv(path, WEIGHTS_COLUMNS, rows)


def _weights_json(table: xr.Dataset) -> dict[str, Any]:
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
            }
        entry["ratio"] = {
            "value": finite_or_none(row["ratio"]),
            "ci_low": finite_or_none(row["ratio_low"]),
            "ci_high": finite_or_none(row["ratio_high"]),
        }
        out[str(definition)] = entry
    out["all_groups"] = {
        str(o): {"mean_weight": finite_or_none(table["mean_weight_all"].sel(output=o))}
        for o in table["output"].values
    }
    return out


def _plot_histograms(
    scores: np.ndarray,
    membership: xr.DataArray,
    valid: np.ndarray,
    explanations: xr.Dataset,
    out_dir: Path,
) -> Path:
    n_maps, level = scores.shape[0], explanations.attrs.get("noise_level", "")
    return plot_weight_histograms(
        scores,
        membership,
        out_dir / WEIGHT_HISTOGRAMS,
        valid,
        [str(o) for o in explanations["output"].values],
        title=f"Weights of SOP groups by structure class ({n_maps} maps, {level})",
    )


def _plot_examples(
    explanations: xr.Dataset,
    data: PatchData,
    scores: np.ndarray,
    valid: np.ndarray,
    labels: np.ndarray,
    n_examples: int,
    out_dir: Path,
) -> dict[str, Path]:
    """The maps with the most groups of non-zero weight, their top groups outlined."""
    outputs = [str(o) for o in explanations["output"].values]
    used = ((scores > 0) & valid[..., None]).sum(axis=(1, 2))
    chosen = np.argsort(-used, kind="stable")[: max(int(n_examples), 0)]
    pixel_scale = data.ds.attrs.get("pixel_scale_arcmin")
    stem = Path(EXAMPLE_GROUPS).stem
    files = {}
    for rank, i in enumerate(chosen.tolist(), start=1):
        one = explanations.isel(sample=i)
        kappa = kappa_rows(data, np.asarray([int(one["store_index"])]))[0]
        truth = ", ".join(f"{o} {float(v):.3g}" for o, v in zip(outputs, one["target"].values))
        guess = ", ".join(f"{o} {float(v):.3g}" for o, v in zip(outputs, one["prediction"].values))
        name = stem if rank == 1 else f"{stem}_{rank}"
        files[name] = plot_groups(
            kappa,
            one["masks"].values,
            scores[i],
            labels[i],
            out_dir / Path(EXAMPLE_GROUPS).with_stem(name),
            outputs,
            valid=valid[i],
            pixel_scale_arcmin=pixel_scale,
            title=f"{one['cosmology'].values} patch {int(one['patch_index'])}: true {truth}; "
            f"SOP predicts {guess}",
        )
    return files
