"""The ``structures`` step of one noise level: voids and clusters among SOP's groups.

Classifies every SOP group as void / cluster by the kappa it covers, weighs the classes for
Omega_m and sigma_8 with intervals from a bootstrap over cosmologies, records whether the SOP
paper's finding (voids weigh more for Omega_m, clusters for sigma_8) holds, weighs the null
controls (:mod:`~cosmo_sop.structures.nulls`: uniform scores, random groups, optionally the SOP
at initialisation) the same way and tests each class against them, paired on the same bootstrap
draws (:mod:`~cosmo_sop.structures.findings`), and measures purity. Writes, into the level's science
folder (:func:`cosmo_sop.layout.science_dir`), ``weights.csv``, ``verdicts.json``,
``purity_sop.json``, ``weight_histograms.png`` and ``example_groups*.png``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
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
from cosmo_sop.models.trained import load_sop
from cosmo_sop.storage import finite_or_none, write_json
from cosmo_sop.structures.cells import TIE_STREAM
from cosmo_sop.structures.classes import (
    classification_smoothing,
    classify,
    group_labels,
    group_statistics,
    sigma_map,
)
from cosmo_sop.structures.definitions import StructureDefinition, checked_definitions
from cosmo_sop.structures.findings import assess
from cosmo_sop.structures.nulls import (
    INIT_STREAM,
    RANDOM_STREAM,
    check_nulls,
    initial_sop,
    null_groups,
)
from cosmo_sop.structures.purity import cell_purity, purity_table, sop_pixel_importance, sop_purity
from cosmo_sop.structures.records import (
    purity_content,
    verdicts_content,
    write_weights_csv,
)
from cosmo_sop.structures.weights import verdicts, weight_table
from cosmo_sop.training.data import PatchData
from cosmo_sop.training.loop import derived_seed

#: Maps whose masks, sigma maps and null groups are in memory at a time.
MAPS_PER_CHUNK = 64


def run(
    config: Mapping[str, Any],
    *,
    explanations: str | os.PathLike,
    patches: str | os.PathLike,
    out_dir: str | os.PathLike,
    sop: str | os.PathLike | None = None,
    segments: str | os.PathLike | None = None,
    n_examples: int = 3,
) -> dict[str, Any]:
    """Weights of void and cluster groups for Omega_m and sigma_8, their nulls, and purity.

    Parameters
    ----------
    config
        The validated config (:func:`cosmo_sop.config.validate_config`); reads ``seed`` and
        ``structures``: ``definitions`` (must include ``void_authors`` and ``cluster_authors``,
        for purity and the figures), ``n_boot`` (bootstrap replicates; intervals are 95 %),
        ``nonzero_only`` (see :func:`cosmo_sop.structures.weight_table`),
        ``bootstrap_blocks`` (``"cosmology"``: resample whole cosmologies; ``"map"``: maps),
        ``nulls`` (the null controls to weigh) and ``smoothing_pixels`` (Gaussian sigma in
        pixels of the map groups are classified on; null: ``segmentation.smoothing_pixels``,
        see :func:`cosmo_sop.structures.classes.classification_smoothing`).
    explanations
        Explanation store written by :func:`cosmo_sop.explain.explain_split`.
    patches
        The patch store the explanations were made from (checked).
    out_dir
        Folder for the outputs (created).
    sop
        Run folder of the trained SOP (for the ``initial`` and ``random`` nulls); None: the
        folder the explanation store names (its ``sop_dir`` attribute).
    segments
        The segments store, for a SOP with segment tokens (random groups draw segments;
        default: the one the explanation store names).
    n_examples
        Maps drawn with their groups: those with the most groups of non-zero weight.

    Returns
    -------
    dict
        ``n_maps``, ``weights`` (the trained SOP's weight table), ``null_weights`` (null ->
        its table), ``verdicts`` (records with the nulls, the paired tests and the findings), ``purity_sop``
        (output -> mean purity with its interval), ``files`` (name -> path).
    """
    settings = _settings(config)
    definitions = checked_definitions(config["structures"]["definitions"])
    explained = open_explanations(explanations)
    segment_tokens = explained.attrs.get("tokens") == "segments"
    nulls = check_nulls(config["structures"]["nulls"])
    if segment_tokens:
        # As for the SOP folder: by default the segments store the explanations name.
        segments = segments or explained.attrs.get("segments_store") or None
        if segments is None and set(nulls) & {"initial", "random"}:
            raise InputError(
                explanations,
                "a segment-token SOP's null controls need its segments store (--segments)",
            )
    data = patches_for(explained, explanations, patches, segments if segment_tokens else None)
    blocks = _blocks(explained, settings["bootstrap_blocks"])
    models = _null_models(nulls, sop or explained.attrs.get("sop_dir"), settings)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    measured = _measure(explained, data, definitions, settings, nulls, models)
    membership = classify(measured["stats"], definitions)
    scores = np.asarray(explained["scores"].values, dtype=np.float64)
    valid = measured["stats"]["valid"].values
    outputs = [str(o) for o in explained["output"].values]
    table = _table(scores, membership, valid, outputs, settings, blocks)
    null_tables = {
        name: _table(
            part["scores"],
            classify(part["stats"], definitions),
            part["valid"],
            outputs,
            settings,
            blocks,
        )
        for name, part in measured["nulls"].items()
    }
    records = assess(
        verdicts(table, settings["min_blocks"]), table, null_tables, settings["min_blocks"]
    )
    purity = {
        kind: _purity_by_output(values, outputs, settings, blocks)
        for kind, values in (
            ("cells", measured["cell_purity"]),
            ("groups", sop_purity(scores, membership, valid)),
        )
    }
    content = verdicts_content(
        table,
        records,
        definitions,
        settings,
        explained,
        explanations,
        null_tables,
        measured["stats"],
    )
    files = {
        "weights": write_weights_csv(table, out_dir / WEIGHTS_CSV),
        "verdicts": write_json(out_dir / VERDICTS, content),
        "purity_sop": write_json(
            out_dir / PURITY_SOP, purity_content(purity["cells"], purity["groups"], settings)
        ),
        "weight_histograms": _plot_histograms(scores, membership, valid, explained, out_dir),
    }
    labels = group_labels(membership)
    files.update(
        _plot_examples(explained, data, scores, valid, labels, n_examples, settings, out_dir)
    )
    return {
        "n_maps": int(scores.shape[0]),
        "weights": table,
        "null_weights": null_tables,
        "verdicts": records,
        "purity_sop": purity["cells"],
        "files": files,
    }


def _settings(config: Mapping[str, Any]) -> dict[str, Any]:
    """The bootstrap and classification settings of the step, as verdicts.json records them."""
    options = config["structures"]
    return {
        "n_boot": int(options["n_boot"]),
        "seed": int(config["seed"]),
        "nonzero_only": bool(options["nonzero_only"]),
        "bootstrap_blocks": options["bootstrap_blocks"],
        "min_blocks": int(options["min_blocks"]),
        # groups and purity cells are classified on the map smoothed as segmentation smooths it
        "smoothing_pixels": classification_smoothing(config),
        "null_notes": {},
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


def _null_models(
    nulls: Sequence[str], sop_dir: str | os.PathLike | None, settings: dict[str, Any]
) -> dict[str, Any]:
    """The trained SOP and its initial state, where a null needs them; notes how the initial
    state was seeded into ``settings["null_notes"]``."""
    if not set(nulls) & {"initial", "random"}:
        return {}
    if not sop_dir:
        raise InputError("argument 'sop'", "the initial and random nulls need the SOP run folder")
    trained = load_sop(sop_dir)
    models: dict[str, Any] = {"trained": trained, "initial": None}
    if "initial" in nulls:
        recorded = (trained.sidecar.get("training_config") or {}).get("seed")
        seed = settings["seed"] if recorded is None else int(recorded)
        models["initial"] = initial_sop(trained, seed)
        source = "the config seed" if recorded is None else "the training seed of the sidecar"
        settings["null_notes"]["initial"] = (
            f"SumOfParts.from_config(trained backbone, trained config) under "
            f"derived_seed({seed}, {INIT_STREAM}) ({source}), as train_sop initialises it"
        )
    return models


def _measure(
    explanations: xr.Dataset,
    data: PatchData,
    definitions: tuple[StructureDefinition, ...],
    settings: Mapping[str, Any],
    nulls: Sequence[str],
    models: Mapping[str, Any],
) -> dict[str, Any]:
    """Group statistics of the trained SOP and of every null, and SOP's cell purity, chunk by
    chunk of maps (masks, sigma maps and null groups of a whole split need not fit in memory;
    the per-group statistics are small)."""
    rows = np.asarray(explanations["store_index"].values)
    tokens = next(v for v in ("group_tokens", "group_segments") if v in explanations)
    rng = np.random.default_rng(derived_seed(settings["seed"], RANDOM_STREAM))
    # one tie-break stream through all chunks: the cells of one call on all the maps
    ties = np.random.default_rng(derived_seed(settings["seed"], TIE_STREAM))
    stats, cells = [], []
    parts: dict[str, list[Any]] = {name: [] for name in nulls}
    starts = range(0, rows.size, MAPS_PER_CHUNK)
    for start in tqdm(starts, desc="groups and nulls", unit="chunk", disable=len(starts) < 2):
        here = slice(start, start + MAPS_PER_CHUNK)
        kappa = kappa_rows(data, rows[here])
        sigma = sigma_map(kappa, settings["smoothing_pixels"])
        chunk = explanations.isel(sample=here)
        masks, valid = chunk["masks"].values, chunk["valid"].values
        scores = chunk["scores"].values
        stats.append(group_statistics(sigma, masks, valid, definitions))
        importance = sop_pixel_importance(masks, scores, valid)
        cells.append(cell_purity(sigma, importance, definitions, rng=ties))
        if not nulls:
            continue
        segments = None
        if data.seg_ds is not None:
            segments = np.asarray(data.seg_ds["segments"].isel(sample=rows[here]).values)
        groups = {"masks": masks, "valid": valid, "scores": scores, "tokens": chunk[tokens].values}
        made = null_groups(
            nulls, kappa, segments, models.get("trained"), models.get("initial"), groups, rng
        )
        for name, null in made.items():
            null_stats = group_statistics(sigma, null.masks, null.valid, definitions)
            parts[name].append((null_stats, null.scores, null.valid & null_stats["valid"].values))
    joined = {
        name: {
            "stats": _concat([p[0] for p in pieces]),
            "scores": np.concatenate([p[1] for p in pieces]),
            "valid": np.concatenate([p[2] for p in pieces]),
        }
        for name, pieces in parts.items()
    }
    return {"stats": _concat(stats), "cell_purity": np.concatenate(cells), "nulls": joined}


def _concat(pieces: list[xr.Dataset]) -> xr.Dataset:
    return xr.concat(pieces, dim="sample") if len(pieces) > 1 else pieces[0]


def _table(
    scores: np.ndarray,
    membership: xr.DataArray,
    valid: np.ndarray,
    outputs: list[str],
    settings: Mapping[str, Any],
    blocks: np.ndarray | None,
) -> xr.Dataset:
    """A weight table with the step's bootstrap (the same seed: the same resampled blocks)."""
    return weight_table(
        scores,
        membership,
        valid,
        outputs,
        settings["nonzero_only"],
        settings["n_boot"],
        settings["seed"],
        blocks=blocks,
    )


def _purity_by_output(
    purity: np.ndarray,
    outputs: list[str],
    settings: Mapping[str, Any],
    blocks: np.ndarray | None,
) -> dict[str, dict[str, Any]]:
    """Output -> mean purity over maps, its interval and the maps it is defined on."""
    table = purity_table(
        {SOP: purity}, outputs, settings["n_boot"], settings["seed"], blocks=blocks
    )
    table = table.sel({"method": SOP})
    return {
        output: {
            "purity": finite_or_none(table["purity"].sel(output=output)),
            "ci_low": finite_or_none(table["ci_low"].sel(output=output)),
            "ci_high": finite_or_none(table["ci_high"].sel(output=output)),
            "n_maps": int(table["n_maps"].sel(output=output)),
        }
        for output in outputs
    }


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
    settings: Mapping[str, Any],
    out_dir: Path,
) -> dict[str, Path]:
    """The maps with the most groups of non-zero weight, their top groups outlined on the map
    that classified them."""
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
            smoothing_pixels=settings["smoothing_pixels"],
            title=f"{one['cosmology'].values} patch {int(one['patch_index'])}: true {truth}; "
            f"SOP predicts {guess}",
        )
    return files
