"""The ``faithfulness`` step of one noise level: SOP's groups against post-hoc attributions.

Every method ranks the pixels of each map for each output (Omega_m: target 0, sigma_8: target
1), by the magnitude of its attribution by default (:mod:`~cosmo_sop.faithfulness.importances`;
``evaluation.ranking``), ties broken by a seeded random pixel order shared by all methods. Each
method is scored as several *entries* (:class:`~cosmo_sop.faithfulness.summary.Entry`):

- SOP (token resolution: its groups are unions of tokens) on the backbone, and on the SOP
  model itself (``SumOfParts.forward`` of the perturbed maps; ``evaluation.own_model``);
- every baseline per pixel and per token (its importance averaged over each of SOP's cells or
  segments, ``evaluation.token_reduce``), on the backbone; X-Gradient also on the X-DNN it
  explains.

Metrics: the MSE of the scoring model fed only its top 20 % of pixels, insertion / deletion
(``evaluation.n_fractions`` positions), grouped insertion / deletion over SOP's groups (on the
backbone only; a token entry's group order equals its pixel entry's under ``mean``
aggregation, so it is copied), purity (:mod:`cosmo_sop.structures.purity`) and sparsity (the
fraction of pixels holding ``evaluation.sparsity_mass`` of the |attribution| mass, the same
definition for all: a baseline's attribution to the backbone's standardised output, SOP's the
contributions c_i (y_i - h(0)) of the groups holding a pixel, in the same units and from the
same zero map, :func:`~cosmo_sop.faithfulness.ranks.group_contributions`). Pixels are set to 0
(kappa's mean, :data:`SUBSTRATE`). Outputs in the science folder
(:mod:`cosmo_sop.layout`):

- ``faithfulness.zarr``: ``score`` (sample, entry, metric, output), the per-map scores, with the
  ``cosmology`` and ``store_index`` of every sample; the summary (entry, metric, output):
  ``mean``, ``ci_low``, ``ci_high``, ``n_maps``, ``sop_minus`` (paired difference SOP − entry)
  with ``diff_ci_low`` / ``diff_ci_high``, its p-value ``diff_p`` and ``diff_p_adjusted``
  (Benjamini–Hochberg over the table), from a bootstrap over cosmologies
  (:mod:`cosmo_sop.statistics`); coordinates ``method``, ``resolution``, ``scorer`` (entry) and
  ``better`` (metric). Attributes: ``n_maps``, ``n_cosmologies``, ``multiplicity``, ``n_boot``,
  ``seed``, ``keep_fraction``, ``ranking``, ``token_reduce``, ``sparsity_mass``,
  ``smoothing_pixels`` (of the sigma map purity classifies on), ``skipped``,
  ``method_options``, ``noise_level``, ``explanations_store``, ``backbone_dir``;
- ``faithfulness.csv``: the summary, one row per entry, output and metric
  (:func:`~cosmo_sop.faithfulness.summary.write_summary_csv`), ``significant`` where the
  adjusted p-value is below 0.05;
- ``purity.csv``: mean purity per method and output with intervals (cosmologies resampled);
- ``faithfulness_curves.png`` / ``.pdf``: the curves of the backbone-scored entries (optional).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import xarray as xr

from cosmo_sop.explain import open_explanations, patches_for
from cosmo_sop.faithfulness.importances import (
    baseline_importance,
    sop_importance,
    token_map,
)
from cosmo_sop.faithfulness.loading import Maps, SOPScorer, chosen_maps, load_models
from cosmo_sop.faithfulness.metrics import faithfulness_metrics
from cosmo_sop.faithfulness.options import DEFAULT_METHODS, Settings, settings_of
from cosmo_sop.faithfulness.ranks import (
    contribution_sparsity,
    group_contributions,
    mass_fraction,
    token_aggregate,
)
from cosmo_sop.faithfulness.results import (
    DELETION,
    GROUPED_DELETION,
    GROUPED_INSERTION,
    INSERTION,
    SPARSITY,
    kept_mse_name,
)
from cosmo_sop.faithfulness.substrates import SubstrateKind, substrate_prediction
from cosmo_sop.faithfulness.summary import (
    BACKBONE,
    PIXEL,
    SOP,
    SOP_MODEL,
    TOKEN,
    XDNN,
    Entry,
    scores_dataset,
    write_purity_csv,
    write_summary_csv,
)
from cosmo_sop.figures.faithfulness import plot_curves
from cosmo_sop.layout import FAITHFULNESS_CSV, FAITHFULNESS_CURVES, FAITHFULNESS_STORE, PURITY_CSV
from cosmo_sop.storage import json_text, write_zarr
from cosmo_sop.structures.cells import TIE_STREAM
from cosmo_sop.structures.classes import classification_smoothing, sigma_map
from cosmo_sop.structures.definitions import StructureDefinition
from cosmo_sop.structures.purity import cell_purity
from cosmo_sop.training.loop import derived_seed

__all__ = ["DEFAULT_METHODS", "faithfulness_evaluation", "run"]

PURITY = "purity"
GROUPED = (GROUPED_INSERTION, GROUPED_DELETION)
#: What removed pixels become: the zero map, which SOP masks with and the baselines start from.
SUBSTRATE: SubstrateKind = "zero"


def run(
    config: Mapping[str, Any],
    *,
    explanations: str | os.PathLike,
    patches: str | os.PathLike,
    backbone: str | os.PathLike,
    xdnn: str | os.PathLike | None,
    out_dir: str | os.PathLike,
    segments: str | os.PathLike | None = None,
    sop: str | os.PathLike | None = None,
) -> xr.Dataset:
    """The ``faithfulness`` step of the workflow (see :func:`faithfulness_evaluation`).

    ``config`` is the validated workflow config: its ``evaluation`` section,
    ``structures.definitions`` and the structures step's smoothing (for purity, see
    :func:`~cosmo_sop.structures.classes.classification_smoothing`) and the master ``seed``.
    ``sop`` is the SOP run folder (default: the one the explanation store names).
    """
    evaluation = config["evaluation"]
    keys = ("ranking", "token_reduce", "sparsity_mass", "n_fractions", "own_model")
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
        method_options=evaluation["method_options"],
        seed=config["seed"],
        definitions=config["structures"]["definitions"],
        n_boot=evaluation["n_boot"],
        sop_dir=sop,
        smoothing_pixels=classification_smoothing(config),
        **{k: evaluation[k] for k in keys},
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
    sop_dir: str | os.PathLike | None = None,
    smoothing_pixels: float | None = None,
    maps_per_call: int = 16,
    max_batch: int = 64,
    figures: bool = True,
    **scoring: Any,
) -> xr.Dataset:
    """Faithfulness of SOP's groups and of post-hoc attributions, per map and summarised.

    The config keys (``methods``, ``n_maps``, ``keep_fraction``, ``n_samples``, ``n_boot`` and
    the ``scoring`` keys ``ranking``, ``token_reduce``, ``sparsity_mass``, ``n_fractions``,
    ``own_model`` of ``evaluation``; ``structures.definitions``; the master ``seed``) default to
    the config schema's values when None (see the module docstring for what they do).

    Parameters
    ----------
    explanations_store, patches_store, segments_store
        Explanation store, its patch store and segmentation (KernelSHAP and LIME attribute to
        segments and are skipped, with a warning, without it; SOP on segments needs it).
    backbone_dir, xdnn_dir, sop_dir
        Run folders of the backbone, its X-DNN twin (``"x_gradient"`` only) and the SOP model
        (scored on itself with ``own_model``; None: the folder the store names).
    out_dir
        Folder for the outputs (created).
    method_options
        Method -> keyword options of :func:`~cosmo_sop.attribution.attribute`.
    smoothing_pixels
        Gaussian sigma (pixels) of the sigma map the purity cells are classified on, as in the
        structures step (None: the schema's defaults, i.e. segmentation's smoothing).
    maps_per_call, max_batch
        Maps per attribution call, perturbed maps per model call (both bound memory; 64 maps
        per call give the demo CNN the most maps per second on CPU,
        ``benchmarks/backbone_layout.py``).
    figures
        Draw ``faithfulness_curves.png``.

    Returns
    -------
    xarray.Dataset
        What ``faithfulness.zarr`` holds.
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
        smoothing_pixels,
        **scoring,
    )
    explained = open_explanations(explanations_store)
    data = patches_for(explained, explanations_store, patches_store, segments_store)
    if settings.own_model and SOP in settings.methods and sop_dir is None:
        sop_dir = explained.attrs.get("sop_dir") or None
    tokens_of_sop = str(explained.attrs.get("tokens", "patches"))
    if tokens_of_sop == "segments" and segments_store is None:
        # Without the segments neither SOP on itself nor the per-token baselines can be run.
        settings.skipped["per token, SOP on SOP"] = "SOP groups segments: needs the segments store"
        sop_dir = None
    own_sop = sop_dir if settings.own_model and SOP in settings.methods else None
    models = load_models(
        backbone_dir, xdnn_dir, settings.methods, data, explained, explanations_store, own_sop
    )
    maps = chosen_maps(explained, data, models.scaler, settings)
    contributions = _sop_contributions(explained, maps, models)
    ranked, sparse = _importances(maps, models, settings, token_map(explained, maps), contributions)
    results = _score_entries(maps, models, ranked, settings, max_batch)
    purities = _purities(maps, ranked, settings)
    for entry, per_output in results.items():
        for o, output in enumerate(maps.outputs):
            per_output[output][PURITY] = purities[entry.method, entry.resolution][:, o]
            per_output[output][SPARSITY] = sparse[entry.method, entry.resolution][:, o]
    table = _dataset(results, maps, explained, settings)
    # No wall-clock time in the store: a rerun under the same seed must write the same bytes.
    table.attrs.update(_attrs(maps, settings, explained, explanations_store, backbone_dir))
    _write(table, results, purities, maps, settings, out_dir, figures)
    return table


def _importances(
    maps: Maps,
    models: Any,
    settings: Settings,
    tokens: torch.Tensor | None,
    contributions: torch.Tensor,
) -> tuple[dict[tuple[str, str], np.ndarray], dict[tuple[str, str], np.ndarray]]:
    """(method, resolution) -> ranking map (N, n_outputs, H, W), and -> sparsity (N, n_out);
    ``contributions`` (N, m, n_outputs): SOP's (:func:`_sop_contributions`)."""
    ranked, sparse = {}, {}
    mass = settings.sparsity_mass
    for method in settings.methods:
        if method == SOP:
            ranked[SOP, TOKEN] = sop_importance(maps)
            sparse[SOP, TOKEN] = contribution_sparsity(maps.masks, contributions, mass)
            continue
        options = settings.options.get(method, {})
        pixel = baseline_importance(method, maps, models, options, settings.ranking, 16)
        token = None
        if tokens is not None:
            token = np.stack(
                [
                    token_aggregate(pixel[:, o], tokens, settings.token_reduce).numpy()
                    for o in range(pixel.shape[1])
                ],
                axis=1,
            )
        resolutions = ((PIXEL, pixel),) if token is None else ((PIXEL, pixel), (TOKEN, token))
        for resolution, importance in resolutions:
            ranked[method, resolution] = importance
            sparse[method, resolution] = _per_output(mass_fraction, importance, mass)
    return ranked, sparse


def _sop_contributions(explained: xr.Dataset, maps: Maps, models: Any) -> torch.Tensor:
    """SOP's contributions c_i (y_i - h(0)) (N, m, n_outputs), standardised like the baselines'
    attributions: the store's partial predictions (physical units) through the backbone's label
    scaler, h(0) the backbone on :data:`SUBSTRATE`."""
    partial = np.asarray(explained["partial"].isel(sample=maps.chosen).values, np.float64)
    reference = substrate_prediction(models.backbone.eval(), maps.x, SUBSTRATE)
    return group_contributions(maps.scores, models.scaler.transform(partial), reference, maps.valid)


def _per_output(function: Any, importance: np.ndarray, *args: Any) -> np.ndarray:
    """``function(importance[:, o], *args)`` for every output, stacked to (N, n_outputs)."""
    return np.stack([function(importance[:, o], *args) for o in range(importance.shape[1])], 1)


def _entries(settings: Settings, models: Any) -> list[tuple[Entry, Any, bool]]:
    """Every entry with its scoring model and whether it scores the grouped curves."""
    backbone = models.backbone.eval()
    entries = []
    for method in settings.methods:
        if method == SOP:
            entries.append((Entry(SOP, TOKEN, BACKBONE), backbone, True))
            if models.sop is not None:
                entries.append((Entry(SOP, TOKEN, SOP_MODEL), None, False))
            continue
        # Under mean aggregation a token entry orders SOP's groups as its pixel entry does.
        token_grouped = settings.token_reduce != "mean"
        entries.append((Entry(method, PIXEL, BACKBONE), backbone, True))
        entries.append((Entry(method, TOKEN, BACKBONE), backbone, token_grouped))
        if method == "x_gradient" and settings.own_model and models.xdnn is not None:
            xdnn = models.xdnn.eval()
            entries.append((Entry(method, PIXEL, XDNN), xdnn, False))
            entries.append((Entry(method, TOKEN, XDNN), xdnn, False))
    return entries


def _score_entries(
    maps: Maps,
    models: Any,
    ranked: Mapping[tuple[str, str], np.ndarray],
    settings: Settings,
    max_batch: int,
) -> dict[Entry, dict[str, dict[str, Any]]]:
    """``{entry: {output: {metric: result}}}``: the model-scored metrics of every entry."""
    results: dict[Entry, dict[str, dict[str, Any]]] = {}
    fractions = np.linspace(0.0, 1.0, settings.n_fractions)
    for entry, scorer, grouped in _entries(settings, models):
        if (entry.method, entry.resolution) not in ranked:
            continue  # no token map (segment tokens without the segments store)
        if scorer is None:  # SOP on itself, with the segments of every row in segments mode
            scorer = SOPScorer(models.sop, maps.segments)
        sop = entry.method == SOP
        results[entry] = faithfulness_metrics(
            scorer,
            maps.x,
            ranked[entry.method, entry.resolution],
            maps.labels,
            outputs=range(len(maps.outputs)),
            output_names=maps.outputs,
            masks=maps.masks if grouped else None,
            group_scores=maps.scores if sop and grouped else None,
            valid=maps.valid,
            keep_fraction=settings.keep_fraction,
            fractions=fractions,
            substrate=SUBSTRATE,
            max_batch=max_batch if scorer.__class__ is not SOPScorer else max_batch // 8,
            progress=True,
            tie_seed=settings.seed,
        )
        pixel_entry = Entry(entry.method, PIXEL, entry.scorer)
        if not grouped and entry.resolution == TOKEN and pixel_entry in results:
            for output, metrics in results[entry].items():
                source = results[pixel_entry][output]
                metrics.update({k: source[k] for k in GROUPED if k in source})
    return results


def _purities(
    maps: Maps, ranked: Mapping[tuple[str, str], np.ndarray], settings: Settings
) -> dict[tuple[str, str], np.ndarray]:
    """Purity (N, n_outputs) of every (method, resolution) by one rule, SOP included: the
    cells of its top pixels by the importance it is ranked by (SOP's group purity, which only
    compares SOP with itself, is the structures step's ``purity_sop.json``). Classified on the
    sigma map smoothed as the structures step smooths it; ties at the top-pixel cut broken by
    keys of one seed for every method (paired)."""
    sigma = sigma_map(maps.x.numpy(), settings.smoothing_pixels)
    seed = derived_seed(settings.seed, TIE_STREAM)
    return {
        key: cell_purity(sigma, importance, settings.definitions, rng=seed)
        for key, importance in ranked.items()
    }


def _dataset(
    results: Mapping[Entry, Any], maps: Maps, explained: xr.Dataset, settings: Settings
) -> xr.Dataset:
    """Per-map scores and their summary (see the module docstring)."""
    metrics = [kept_mse_name(settings.keep_fraction), INSERTION, *GROUPED[:1], DELETION]
    metrics += [GROUPED_DELETION, PURITY, SPARSITY]
    cosmologies = np.asarray(explained["cosmology"].isel(sample=maps.chosen).values)
    return scores_dataset(
        results, metrics, maps.outputs, cosmologies, maps.rows, settings.n_boot, settings.seed
    )


def _attrs(
    maps: Maps,
    settings: Settings,
    explanations: xr.Dataset,
    explanations_store: str | os.PathLike,
    backbone_dir: str | os.PathLike,
) -> dict[str, Any]:
    """The settings of the evaluation, for the attributes of the store."""
    return {
        "n_maps": int(maps.chosen.size),
        "n_boot": int(settings.n_boot),
        "seed": int(settings.seed),
        "keep_fraction": float(settings.keep_fraction),
        "ranking": settings.ranking,
        "token_reduce": settings.token_reduce,
        "sparsity_mass": float(settings.sparsity_mass),
        "n_fractions": int(settings.n_fractions),
        "smoothing_pixels": float(settings.smoothing_pixels),
        "predictor": "per entry (coordinate scorer); masked pixels set to 0",
        "skipped": json_text(settings.skipped, indent=None),
        "method_options": json_text(settings.options, indent=None),
        "noise_level": str(explanations.attrs.get("noise_level", "")),
        "explanations_store": str(Path(explanations_store).resolve()),
        "backbone_dir": str(Path(backbone_dir).resolve()),
    }


def _write(
    table: xr.Dataset,
    results: Mapping[Entry, Any],
    purities: Mapping[tuple[str, str], np.ndarray],
    maps: Maps,
    settings: Settings,
    out_dir: str | os.PathLike,
    figures: bool,
) -> None:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_zarr(table, out_dir / FAITHFULNESS_STORE)
    write_summary_csv(table, out_dir / FAITHFULNESS_CSV)
    purity = {k: v for k, v in purities.items() if k[0] == SOP or k[1] == PIXEL}
    write_purity_csv(
        purity, maps.outputs, table, settings.n_boot, settings.seed, out_dir / PURITY_CSV
    )
    if figures:
        curves = {e.key: r for e, r in results.items() if e.scorer == BACKBONE}
        plot_curves(curves, out_dir / FAITHFULNESS_CURVES)
