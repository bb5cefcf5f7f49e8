"""The ``faithfulness`` step of one noise level: SOP's groups against post-hoc attributions.

Every method ranks the pixels of each map for each output (Omega_m: target 0, sigma_8: target
1): SOP by the summed weights of the groups holding a pixel
(:func:`cosmo_sop.attribution.group_pixel_importance`), a baseline by its attribution summed
over bins (:func:`cosmo_sop.attribution.pixel_importance`, signed). The *backbone* is the model
under test for every method (X-Gradient explains the X-DNN twin but is scored on the backbone
like the others), fed maps with pixels set to 0 (kappa's mean). On a seeded random subset of
the explained maps the step scores insertion / deletion, grouped insertion / deletion, the MSE
of the backbone fed only its top 20 % of pixels, purity (:mod:`cosmo_sop.structures.purity`)
and sparsity, and writes into the science folder (:mod:`cosmo_sop.layout`):

- ``faithfulness.zarr``: the table, variables ``Om`` and ``s8`` with dims (metric,
  attribution): rows "MSE top-20%" (lower is better; standardised units), "Ins" (lower),
  "InsG" (lower), "Del" (higher), "DelG" (higher), "purity" (higher), "sparsity" (fraction of
  the map with non-zero importance; lower is sparser); coordinate ``better``. Attributes:
  ``n_maps``, ``store_index`` (JSON list of the patch-store rows evaluated), ``seed``,
  ``keep_fraction``, ``predictor``, ``skipped`` (JSON: method -> reason), ``method_options``
  (JSON), ``sop_groups`` (JSON: mean number of groups with non-zero weight per output),
  ``noise_level``, ``explanations_store``, ``backbone_dir``;
- ``faithfulness.csv``: the same table (:func:`~cosmo_sop.faithfulness.table.write_table_csv`);
- ``purity.csv``: mean purity per method and output with bootstrap intervals;
- ``faithfulness_curves.png`` / ``.pdf``: the curves (optional).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import xarray as xr
from tqdm.auto import tqdm

from cosmo_sop.attribution.registry import SOP, attribute, group_pixel_importance, pixel_importance
from cosmo_sop.explain import open_explanations, patches_for
from cosmo_sop.faithfulness.loading import Maps, Models, chosen_maps, load_models
from cosmo_sop.faithfulness.metrics import faithfulness_metrics
from cosmo_sop.faithfulness.options import DEFAULT_METHODS, Settings, settings_of
from cosmo_sop.faithfulness.results import (
    DELETION,
    GROUPED_DELETION,
    GROUPED_INSERTION,
    INSERTION,
    SPARSITY,
    kept_mse_name,
)
from cosmo_sop.faithfulness.table import faithfulness_table, write_table_csv
from cosmo_sop.figures.faithfulness import plot_curves
from cosmo_sop.layout import FAITHFULNESS_CSV, FAITHFULNESS_CURVES, FAITHFULNESS_STORE, PURITY_CSV
from cosmo_sop.storage import json_text, write_csv, write_zarr
from cosmo_sop.structures.classes import classify, group_statistics, sigma_map
from cosmo_sop.structures.definitions import StructureDefinition
from cosmo_sop.structures.purity import cell_purity, purity_table, sop_purity

__all__ = ["DEFAULT_METHODS", "faithfulness_evaluation", "run"]

PURITY = "purity"
#: Rows of the table, after the kept-features MSE.
ROWS = (INSERTION, GROUPED_INSERTION, DELETION, GROUPED_DELETION, PURITY, SPARSITY)


def run(
    config: Mapping[str, Any],
    *,
    explanations: str | os.PathLike,
    patches: str | os.PathLike,
    backbone: str | os.PathLike,
    xdnn: str | os.PathLike | None,
    out_dir: str | os.PathLike,
    segments: str | os.PathLike | None = None,
) -> xr.Dataset:
    """The ``faithfulness`` step of the workflow (see :func:`faithfulness_evaluation`).

    Parameters
    ----------
    config
        The validated workflow config: its ``evaluation`` section (``methods``, ``n_maps``,
        ``keep_fraction``, ``n_samples``), ``structures.definitions`` and ``structures.n_boot``
        (for purity), and the master ``seed``.
    explanations, patches, segments
        Explanation store, the patch store it explains, and that store's segmentation.
    backbone, xdnn
        Run folders of the backbone and of its X-DNN twin.
    out_dir
        The level's science folder.
    """
    evaluation, structures = config["evaluation"], config["structures"]
    return faithfulness_evaluation(
        explanations,
        patches,
        backbone,
        xdnn,
        out_dir,
        segments,
        methods=evaluation["methods"],
        n_maps=evaluation["n_maps"],
        keep_fraction=evaluation["keep_fraction"],
        n_samples=evaluation["n_samples"],
        seed=config["seed"],
        definitions=structures["definitions"],
        n_boot=structures["n_boot"],
    )


def faithfulness_evaluation(
    explanations_store: str | os.PathLike,
    patches_store: str | os.PathLike,
    backbone_dir: str | os.PathLike,
    xdnn_dir: str | os.PathLike | None,
    out_dir: str | os.PathLike,
    segments_store: str | os.PathLike | None = None,
    methods: Sequence[str] | None = None,
    n_maps: int | None = None,
    keep_fraction: float | None = None,
    n_samples: int | None = None,
    method_options: Mapping[str, Mapping[str, Any]] | None = None,
    seed: int | None = None,
    definitions: Sequence[Mapping[str, Any] | StructureDefinition] | None = None,
    n_boot: int | None = None,
    maps_per_call: int = 16,
    max_batch: int = 256,
    figures: bool = True,
) -> xr.Dataset:
    """Faithfulness of SOP's groups and of post-hoc attributions of the backbone, one table.

    The keys of the config (``methods``, ``n_maps``, ``keep_fraction``, ``n_samples`` of
    ``evaluation``; ``definitions`` and ``n_boot`` of ``structures``; the master ``seed``)
    default to the config schema's values when None.

    Parameters
    ----------
    explanations_store, patches_store, segments_store
        Explanation store, the patch store it explains, and that store's segmentation:
        KernelSHAP and LIME attribute to its segments and are skipped (with a warning) without it.
    backbone_dir, xdnn_dir
        Run folders of the backbone that the SOP model wraps (checked through its label scaler,
        which SOP reuses, and against the patch store) and of its X-DNN twin (for
        ``"x_gradient"`` only).
    out_dir
        Folder for the outputs (created); see the module docstring.
    methods
        ``"sop"`` and keys of :data:`cosmo_sop.attribution.METHODS`.
    n_maps
        Maps evaluated: a random subset of the explained maps fixed by ``seed`` (all if fewer).
    keep_fraction
        Fraction of pixels kept for the "MSE top-20%" row.
    n_samples
        Perturbed maps per map of KernelSHAP and LIME.
    method_options
        Method -> keyword options of :func:`~cosmo_sop.attribution.attribute`, over
        ``n_samples``; stochastic methods get ``seed`` unless given. Options of methods not in
        ``methods`` are ignored (one config serves any choice of methods).
    seed
        Seed of the map subset, the stochastic methods and the bootstrap of ``purity.csv``.
    definitions, n_boot
        Structure definitions for purity, bootstrap replicates of its intervals.
    maps_per_call, max_batch
        Maps per attribution call, perturbed maps per backbone call (both bound memory).
    figures
        Draw ``faithfulness_curves.png`` (the slowest part for a few maps).

    Returns
    -------
    xarray.Dataset
        The table written to ``faithfulness.zarr`` (see the module docstring).
    """
    settings = settings_of(
        methods,
        n_maps,
        keep_fraction,
        n_samples,
        method_options,
        seed,
        definitions,
        n_boot,
        segments_store,
    )
    explained = open_explanations(explanations_store)
    data = patches_for(explained, explanations_store, patches_store, segments_store)
    models = load_models(
        backbone_dir, xdnn_dir, settings.methods, data, explained, explanations_store
    )
    maps = chosen_maps(explained, data, models.scaler, settings)
    importance = {
        method: _importance(method, maps, models, settings.options.get(method, {}), maps_per_call)
        for method in settings.methods
    }
    purities = _purities(maps, importance, settings)
    results = _metrics(models.backbone, maps, importance, purities, settings, max_batch)
    table = _assemble(results, settings.keep_fraction)
    table.attrs.update(_attrs(results, maps, settings, explained, explanations_store, backbone_dir))
    _write(table, results, purities, maps.outputs, settings, out_dir, figures)
    return table


def _importance(
    method: str,
    maps: Maps,
    models: Models,
    options: Mapping[str, Any],
    maps_per_call: int,
) -> np.ndarray:
    """Pixel importance (N, n_outputs, H, W) float64 of one method."""
    n_outputs = len(maps.outputs)
    if method == SOP:
        return np.stack(
            [
                group_pixel_importance(maps.masks, maps.scores[..., o]).numpy()
                for o in range(n_outputs)
            ],
            axis=1,
        )
    model = models.xdnn if method == "x_gradient" else models.backbone
    x, segments = maps.x, maps.segments
    out = np.empty((x.shape[0], n_outputs, *x.shape[2:]), dtype=np.float64)
    starts = range(0, x.shape[0], maps_per_call)
    with tqdm(total=len(starts) * n_outputs, desc=method, unit="call") as bar:
        for start in starts:
            here = slice(start, start + maps_per_call)
            for o in range(n_outputs):
                labels = None if segments is None else segments[here]
                attribution = attribute(method, model, x[here], o, labels, **options)
                out[here, o] = pixel_importance(attribution).numpy()
                bar.update()
    return out


def _purities(
    maps: Maps, importance: Mapping[str, np.ndarray], settings: Settings
) -> dict[str, np.ndarray]:
    """Purity (N, n_outputs) per method: SOP's top groups, each pixel method's cells of top pixels."""
    definitions = settings.definitions
    sigma = sigma_map(maps.x.numpy())
    stats = group_statistics(sigma, maps.masks, maps.valid, definitions)
    membership = classify(stats, definitions)
    return {
        method: sop_purity(maps.scores, membership, maps.valid)
        if method == SOP
        else cell_purity(sigma, importance[method], definitions)
        for method in settings.methods
    }


def _metrics(
    backbone: torch.nn.Module,
    maps: Maps,
    importance: Mapping[str, np.ndarray],
    purities: Mapping[str, np.ndarray],
    settings: Settings,
    max_batch: int,
) -> dict[str, dict[str, dict[str, Any]]]:
    """``{method: {output: {metric: result}}}``: the faithfulness metrics, purity, sparsity."""
    results: dict[str, dict[str, dict[str, Any]]] = {}
    for method in settings.methods:
        sop = method == SOP
        results[method] = faithfulness_metrics(
            backbone,
            maps.x,
            importance[method],
            maps.labels,
            outputs=range(len(maps.outputs)),
            output_names=maps.outputs,
            masks=maps.masks,
            group_scores=maps.scores if sop else None,
            valid=maps.valid,
            keep_fraction=settings.keep_fraction,
            max_batch=max_batch,
            progress=True,
        )
        for o, output in enumerate(maps.outputs):
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", "Mean of empty slice", RuntimeWarning)
                results[method][output][PURITY] = float(np.nanmean(purities[method][:, o]))
            if not sop:  # SOP's sparsity (the same fraction) comes from its groups
                used = importance[method][:, o] != 0
                results[method][output][SPARSITY] = float(used.mean(axis=(1, 2)).mean())
    return results


def _assemble(results: Mapping[str, Any], keep_fraction: float) -> xr.Dataset:
    """The 7-row table: kept MSE, (grouped) insertion and deletion, purity, sparsity."""
    rows = [kept_mse_name(keep_fraction), *ROWS]
    table = faithfulness_table(results).sel(metric=rows)
    better = dict(zip(table["metric"].values, table["better"].values, strict=True))
    better.update({PURITY: "higher", SPARSITY: "lower"})
    return table.assign_coords(better=("metric", [better[m] for m in rows]))


def _attrs(
    results: Mapping[str, Any],
    maps: Maps,
    settings: Settings,
    explanations: xr.Dataset,
    explanations_store: str | os.PathLike,
    backbone_dir: str | os.PathLike,
) -> dict[str, Any]:
    """The settings of the evaluation, for the attributes of the table."""
    sop_groups = {}
    if SOP in results:
        sop_groups = {o: float(results[SOP][o][SPARSITY].mean_n_groups) for o in maps.outputs}
    return {
        "n_maps": int(maps.chosen.size),
        "store_index": json_text(maps.rows.tolist(), indent=None),
        "seed": int(settings.seed),
        "keep_fraction": float(settings.keep_fraction),
        "predictor": "backbone (standardised outputs; masked pixels set to 0)",
        "skipped": json_text(settings.skipped, indent=None),
        "method_options": json_text(settings.options, indent=None),
        "sop_groups": json_text(sop_groups, indent=None),
        "noise_level": str(explanations.attrs.get("noise_level", "")),
        "explanations_store": str(Path(explanations_store).resolve()),
        "backbone_dir": str(Path(backbone_dir).resolve()),
    }


def _write(
    table: xr.Dataset,
    results: Mapping[str, Any],
    purities: Mapping[str, np.ndarray],
    outputs: list[str],
    settings: Settings,
    out_dir: str | os.PathLike,
    figures: bool,
) -> None:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_table_csv(table, out_dir / FAITHFULNESS_CSV)
    write_zarr(table, out_dir / FAITHFULNESS_STORE)
    purity = purity_table(purities, outputs, settings.n_boot, settings.seed)
    _write_purity_csv(purity, out_dir / PURITY_CSV)
    if figures:
        plot_curves(results, out_dir / FAITHFULNESS_CURVES)


def _write_purity_csv(table: xr.Dataset, path: Path) -> Path:
    """Mean purity per method and output with its interval (6 significant digits) and maps."""
    rows = []
    for method in table["method"].values:
        for output in table["output"].values:
            cell = table.sel({"method": method, "output": output})
            values = (f"{float(cell[k]):.6g}" for k in ("purity", "ci_low", "ci_high"))
            rows.append([method, output, *values, int(cell["n_maps"])])
    return write_csv(path, ["method", "output", "purity", "ci_low", "ci_high", "n_maps"], rows)
