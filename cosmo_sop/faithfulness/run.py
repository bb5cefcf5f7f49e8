"""The ``faithfulness`` step of one noise level: SOP's groups against post-hoc attributions.

Scores SOP's groups against post-hoc attributions of the backbone by insertion / deletion,
grouped insertion / deletion, the MSE of the backbone fed only its top 20 % of pixels, purity
and sparsity, on a seeded random subset of the explained maps. Writes ``faithfulness.csv``,
``faithfulness.zarr``, ``purity.csv`` and ``faithfulness_curves.png``.
"""

from __future__ import annotations

import csv
import json
import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import xarray as xr
from tqdm.auto import tqdm

from cosmo_sop.attribution.registry import METHODS, SOP, attribute, pixel_importance
from cosmo_sop.errors import InputError
from cosmo_sop.explain import kappa_rows, open_explanations, patches_for
from cosmo_sop.faithfulness.curves import (
    DELETION,
    GROUPED_DELETION,
    GROUPED_INSERTION,
    INSERTION,
    SPARSITY,
    faithfulness_metrics,
    faithfulness_table,
    group_pixel_importance,
    kept_mse_name,
    write_table_csv,
)
from cosmo_sop.figures.faithfulness import plot_curves
from cosmo_sop.storage import atomic_path, write_zarr
from cosmo_sop.structures.classify import (
    StructureDefinition,
    cell_purity,
    classify,
    group_statistics,
    purity_table,
    sigma_map,
    sop_purity,
)
from cosmo_sop.structures.run import checked_definitions
from cosmo_sop.training.data import LabelScaler, PatchData
from cosmo_sop.training.runs import WEIGHTS, check_provenance, load_backbone

#: Methods compared by default: SOP and every baseline of :data:`METHODS`.
DEFAULT_METHODS: tuple[str, ...] = (SOP, *METHODS)
#: Options of the baselines here, over their own defaults: fewer perturbations per map for the
#: perturbation methods bound their cost (n_samples backbone passes per map and output).
DEFAULT_METHOD_OPTIONS: dict[str, dict[str, Any]] = {
    "kernel_shap": {"n_samples": 128},
    "lime": {"n_samples": 128},
}
PURITY = "purity"
#: Maps whose groups are classified at once (bounds the memory of masks and sigma maps).


# --------------------------------------------------------------------------------------------
# Faithfulness


def faithfulness_evaluation(
    explanations_store: str | os.PathLike,
    patches_store: str | os.PathLike,
    backbone_dir: str | os.PathLike,
    xdnn_dir: str | os.PathLike | None,
    out_dir: str | os.PathLike,
    segments_store: str | os.PathLike | None = None,
    methods: Sequence[str] = DEFAULT_METHODS,
    n_maps: int = 100,
    keep_fraction: float = 0.2,
    method_options: Mapping[str, Mapping[str, Any]] | None = None,
    seed: int = 0,
    definitions: Sequence[Mapping[str, Any] | StructureDefinition] | None = None,
    n_boot: int = 1000,
    maps_per_call: int = 16,
    max_batch: int = 256,
    figures: bool = True,
) -> xr.Dataset:
    """Faithfulness of SOP's groups and of post-hoc attributions of the backbone, one table.

    Every method ranks the pixels of each map for each output (Omega_m: target 0, sigma_8:
    target 1): SOP by the summed weights of the groups holding a pixel
    (:func:`cosmo_sop.faithfulness.group_pixel_importance`), a baseline by its attribution
    summed over bins (:func:`cosmo_sop.attribution.baselines.pixel_importance`, signed). The
    *backbone* is the model under test for every method (X-Gradient explains the X-DNN twin but
    is scored on the backbone like the others), fed maps with pixels set to 0 (kappa's mean).

    Parameters
    ----------
    explanations_store, patches_store
        As in :func:`structure_analysis`.
    backbone_dir
        Run folder of the backbone that the SOP model wraps (checked through its label scaler,
        which SOP reuses, and against the patch store's noise level and geometry).
    xdnn_dir
        Run folder of the X-DNN twin; needed for ``"x_gradient"`` only.
    out_dir
        Folder for the outputs (created).
    segments_store
        Segmentation of the patch store; KernelSHAP and LIME attribute to its segments and are
        skipped (with a warning) without it.
    methods
        ``"sop"`` and keys of :data:`cosmo_sop.attribution.baselines.METHODS`.
    n_maps
        Maps evaluated: a random subset of the explained maps fixed by ``seed`` (all if fewer).
    keep_fraction
        Fraction of pixels kept for the "MSE top-20%" row.
    method_options
        Method -> keyword options of :func:`~cosmo_sop.attribution.baselines.attribute`, over
        :data:`DEFAULT_METHOD_OPTIONS`; stochastic methods get ``seed`` unless given. Options of
        methods not in ``methods`` are ignored (one config serves any choice of methods).
    seed
        Seed of the map subset, the stochastic methods and the bootstrap of ``purity.csv``.
    definitions
        Structure definitions for purity (default: :data:`cosmo_sop.structures.DEFAULT_DEFINITIONS`).
    n_boot
        Bootstrap replicates of the purity intervals in ``purity.csv``.
    maps_per_call
        Maps per attribution call (bounds the memory of the gradient methods).
    max_batch
        Perturbed maps per backbone call in the faithfulness metrics.
    figures
        Draw ``faithfulness_curves.png`` (the slowest part for a few maps).

    Returns
    -------
    xarray.Dataset
        Variables ``Om`` and ``s8`` with dims (metric, attribution): rows "MSE top-20%" (lower
        is better; standardised units), "Ins" (lower), "InsG" (lower), "Del" (higher), "DelG"
        (higher), "purity" (higher), "sparsity" (fraction of the map with non-zero importance;
        lower is sparser); coordinate ``better``. Attrs: ``n_maps``, ``store_index`` (JSON list
        of the patch-store rows evaluated), ``seed``, ``keep_fraction``, ``predictor``,
        ``skipped`` (JSON: method -> reason), ``method_options`` (JSON), ``sop_groups`` (JSON:
        mean number of groups with non-zero weight per output).

    Notes
    -----
    Writes ``faithfulness.csv`` (:func:`cosmo_sop.faithfulness.write_table_csv`), ``faithfulness.zarr``
    (the table), ``purity.csv`` (mean purity per method and output with bootstrap intervals),
    ``faithfulness_curves.png``/``.pdf`` (with ``figures``).
    """
    methods = _check_methods(methods)
    definitions = checked_definitions(definitions)
    if isinstance(n_maps, bool) or not isinstance(n_maps, int) or n_maps < 1:
        raise InputError("argument 'n_maps'", f"must be a positive integer, got {n_maps!r}")
    skipped: dict[str, str] = {}
    if segments_store is None:
        for method in [m for m in methods if m != SOP and METHODS[m].needs_segments]:
            skipped[method] = "needs the segments store (not given)"
        if skipped:
            warnings.warn(f"faithfulness: skipping {', '.join(skipped)}, which need the segments "
                          "store", UserWarning, stacklevel=2)  # fmt: skip
        methods = [m for m in methods if m not in skipped]
    options = _method_options(methods, method_options, seed)

    explanations = open_explanations(explanations_store)
    data = patches_for(explanations, explanations_store, patches_store, segments_store)
    backbone, scaler = _load_checked(backbone_dir, data, explanations, explanations_store)
    xdnn = None
    if "x_gradient" in methods:
        if xdnn_dir is None:
            raise InputError("argument 'xdnn_dir'", "x_gradient needs the X-DNN run folder")
        xdnn, _ = _load_checked(xdnn_dir, data, None, explanations_store, kinds=("xdnn",))
    outputs = [str(o) for o in explanations["output"].values]
    if list(scaler.names) != outputs:
        raise InputError(Path(backbone_dir) / "model.json",
                         f"predicts {list(scaler.names)}, the explanations hold {outputs}")

    # The maps: a seeded subset, kept in store order.
    n_total = int(explanations.sizes["sample"])
    chosen = np.arange(n_total)
    if n_maps < n_total:
        chosen = np.sort(np.random.default_rng([seed, n_total]).choice(n_total, n_maps, replace=False))
    subset = explanations.isel(sample=chosen)
    rows = np.asarray(subset["store_index"].values)
    x = torch.from_numpy(kappa_rows(data, rows))
    segments = None
    if data.seg_ds is not None:
        segments = torch.from_numpy(np.asarray(data.seg_ds["segments"].isel(sample=rows).values))
    labels = np.asarray(scaler.transform(np.asarray(subset["target"].values, np.float64)))
    masks = np.asarray(subset["masks"].values)
    scores = np.asarray(subset["scores"].values, dtype=np.float64)
    valid = np.asarray(subset["valid"].values)

    importance = {
        method: _importance(method, x, segments, masks, scores, len(outputs),
                            xdnn if method == "x_gradient" else backbone, options.get(method, {}),
                            maps_per_call)  # fmt: skip
        for method in methods
    }

    # Purity on the same maps: SOP's top groups, each pixel method's cells of top pixels.
    sigma = sigma_map(x.numpy())
    membership = classify(group_statistics(sigma, masks, valid, definitions), definitions)
    purities = {
        method: sop_purity(scores, membership, valid) if method == SOP
        else cell_purity(sigma, importance[method], definitions)
        for method in methods
    }

    results: dict[str, dict[str, dict[str, Any]]] = {}
    for method in methods:
        sop = method == SOP
        results[method] = faithfulness_metrics(
            backbone, x, importance[method], labels, outputs=range(len(outputs)),
            output_names=outputs, masks=masks, group_scores=scores if sop else None,
            valid=valid, keep_fraction=keep_fraction, max_batch=max_batch, progress=True,
        )  # fmt: skip
        for o, output in enumerate(outputs):
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", "Mean of empty slice", RuntimeWarning)
                results[method][output][PURITY] = float(np.nanmean(purities[method][:, o]))
            if not sop:  # SOP's sparsity (the same fraction) comes from its groups
                used = importance[method][:, o] != 0
                results[method][output][SPARSITY] = float(used.mean(axis=(1, 2)).mean())

    table = _assemble(results, keep_fraction)
    sop_groups = ({o: float(results[SOP][o][SPARSITY].mean_n_groups) for o in outputs}
                  if SOP in results else {})  # fmt: skip
    table.attrs.update({
        "n_maps": int(chosen.size),
        "store_index": json.dumps(rows.tolist()),
        "seed": int(seed),
        "keep_fraction": float(keep_fraction),
        "predictor": "backbone (standardised outputs; masked pixels set to 0)",
        "skipped": json.dumps(skipped),
        "method_options": json.dumps(options, default=str),
        "sop_groups": json.dumps(sop_groups),
        "noise_level": str(explanations.attrs.get("noise_level", "")),
        "explanations_store": str(Path(explanations_store).resolve()),
        "backbone_dir": str(Path(backbone_dir).resolve()),
    })  # fmt: skip

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_table_csv(table, out_dir / "faithfulness.csv")
    write_zarr(table, out_dir / "faithfulness.zarr")
    _write_purity_csv(purity_table(purities, outputs, n_boot, seed), out_dir / "purity.csv")
    if figures:
        plot_curves(results, out_dir / "faithfulness_curves.png")
    return table


def _check_methods(methods: Sequence[str]) -> list[str]:
    if isinstance(methods, str) or not methods:
        raise InputError("argument 'methods'", f"must be a non-empty list of names, got {methods!r}")
    methods = list(dict.fromkeys(methods))
    unknown = [m for m in methods if m != SOP and m not in METHODS]
    if unknown:
        raise InputError("argument 'methods'", f"unknown {unknown}; valid: {[SOP, *METHODS]}")
    return methods


def _method_options(
    methods: Sequence[str], given: Mapping[str, Mapping[str, Any]] | None, seed: int
) -> dict[str, dict[str, Any]]:
    given = dict(given or {})
    unknown = sorted(set(given) - {SOP, *METHODS})
    if unknown:
        raise InputError("argument 'method_options'", f"unknown method(s) {unknown}")
    if SOP in given and given[SOP]:
        raise InputError("argument 'method_options'", "SOP's attribution takes no options")
    options = {}
    for method in methods:
        if method == SOP:
            continue
        merged = {**DEFAULT_METHOD_OPTIONS.get(method, {}), **dict(given.get(method, {}))}
        if METHODS[method].stochastic:
            merged.setdefault("seed", int(seed))
        accepted = METHODS[method].options
        bad = sorted(set(merged) - set(accepted))
        if bad:
            raise InputError(f"method_options[{method!r}]",
                             f"unknown option(s) {bad}; accepted: {list(accepted)}")
        options[method] = merged
    return options


def _load_checked(
    run_dir: str | os.PathLike,
    data: PatchData,
    explanations: xr.Dataset | None,
    explanations_store: str | os.PathLike,
    kinds: tuple[str, ...] = ("backbone",),
) -> tuple[torch.nn.Module, LabelScaler]:
    """A trained backbone or X-DNN, refused if trained on other data than the patch store."""
    model, sidecar = load_backbone(run_dir)
    where = Path(run_dir) / WEIGHTS
    kind = sidecar["model_config"]["kind"]
    if kind not in kinds:
        raise InputError(where, f"holds a {kind!r} model, expected {' or '.join(kinds)}")
    check_provenance(sidecar, data, where)
    scaler = LabelScaler.from_state_dict(sidecar["label_scaler"])
    made_with = None if explanations is None else explanations.attrs.get("label_scaler")
    if made_with is not None:
        # SOP reuses its backbone's label scaler: a different one means another backbone.
        theirs = LabelScaler.from_state_dict(json.loads(made_with))
        if not (np.allclose(theirs.mean, scaler.mean) and np.allclose(theirs.std, scaler.std)):
            raise InputError(where, f"is not the backbone of the SOP model behind "
                             f"{explanations_store} (its label scaler differs)")
    return model, scaler


def _importance(
    method: str,
    x: torch.Tensor,
    segments: torch.Tensor | None,
    masks: np.ndarray,
    scores: np.ndarray,
    n_outputs: int,
    model: torch.nn.Module | None,
    options: Mapping[str, Any],
    maps_per_call: int,
) -> np.ndarray:
    """Pixel importance (N, n_outputs, H, W) float64 of one method."""
    if method == SOP:
        return np.stack([group_pixel_importance(masks, scores[..., o]).numpy()
                         for o in range(n_outputs)], axis=1)  # fmt: skip
    out = np.empty((x.shape[0], n_outputs, *x.shape[2:]), dtype=np.float64)
    starts = range(0, x.shape[0], maps_per_call)
    with tqdm(total=len(starts) * n_outputs, desc=method, unit="call") as bar:
        for start in starts:
            here = slice(start, start + maps_per_call)
            for o in range(n_outputs):
                attribution = attribute(method, model, x[here], o,
                                        None if segments is None else segments[here], **options)
                out[here, o] = pixel_importance(attribution).numpy()
                bar.update()
    return out


def _assemble(results: Mapping[str, Any], keep_fraction: float) -> xr.Dataset:
    """The 7-row table: kept MSE, (grouped) insertion and deletion, purity, sparsity."""
    table = faithfulness_table(results)
    rows = [kept_mse_name(keep_fraction), INSERTION, GROUPED_INSERTION, DELETION,
            GROUPED_DELETION, PURITY, SPARSITY]  # fmt: skip
    table = table.sel(metric=rows)
    better = {**dict(zip(table["metric"].values, table["better"].values)), PURITY: "higher",
              SPARSITY: "lower"}  # fmt: skip
    return table.assign_coords(better=("metric", [better[m] for m in rows]))


def _write_purity_csv(table: xr.Dataset, path: Path) -> Path:
    with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["method", "output", "purity", "ci_low", "ci_high", "n_maps"])
        for method in table["method"].values:
            for output in table["output"].values:
                cell = table.sel({"method": method, "output": output})
                writer.writerow([method, output,
                                 *(f"{float(cell[k]):.6g}" for k in ("purity", "ci_low", "ci_high")),
                                 int(cell["n_maps"])])  # fmt: skip
    return path
