"""The ``summary_statistics`` step: the classical baseline on one noise level's patch store.

:func:`run` (the CLI's entry) and :func:`run_summary_statistics` compute the summary
statistics of every map chunk by chunk (:mod:`cosmo_sop.summary_statistics.features`), fit the
regressors (:mod:`cosmo_sop.summary_statistics.regressor`) on the train split with early
stopping / penalty choice on the val split, and write the test mean-squared errors
(``summary_statistics.json``) and the test predictions (``summary_statistics.npz`` beside it,
for the predicted-vs-true scatter plot; see :func:`cosmo_sop.layout.summary_statistics`).
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dask
import numpy as np
from tqdm.dask import TqdmCallback

from cosmo_sop import __version__
from cosmo_sop.errors import InputError
from cosmo_sop.kappa import smooth_maps
from cosmo_sop.models.targets import LabelScaler
from cosmo_sop.storage import atomic_path, finite_or_none, write_json
from cosmo_sop.summary_statistics.features import feature_names, summary_features
from cosmo_sop.summary_statistics.options import resolve_summary_config
from cosmo_sop.summary_statistics.peaks import snr_edges
from cosmo_sop.summary_statistics.regressor import fit_summary_regressor
from cosmo_sop.summary_statistics.spectra import ModeBinning, ell_bin_edges, mode_binning
from cosmo_sop.training.data import SPLITS, PatchData


def run(
    config: Mapping[str, Any],
    *,
    patches: str | os.PathLike,
    output: str | os.PathLike,
    workers: int = 1,
) -> dict[str, Any]:
    """The ``summary_statistics`` step of the workflow (see :func:`run_summary_statistics`).

    Parameters
    ----------
    config
        The validated workflow config: its ``summary_statistics`` section, and its master
        ``seed`` where the section's ``seed`` is null.
    patches
        Patch store of one noise level.
    output
        ``summary_statistics.json`` to write (the ``.npz`` of predictions beside it).
    workers
        Threads for the feature computation.
    """
    options = dict(config["summary_statistics"])
    if options.get("seed") is None:
        options["seed"] = config["seed"]
    return run_summary_statistics(patches, output, options, workers=workers)


def run_summary_statistics(
    patches_store: str | os.PathLike,
    output_json: str | os.PathLike,
    config: Mapping[str, Any] | None = None,
    workers: int = 1,
) -> dict[str, Any]:
    """Summary statistics of a patch store, regressed to (Om, s8); test errors to JSON.

    The features of every map are computed chunk by chunk (dask, ``workers`` threads), the
    regressors of ``config["regressors"]`` are fitted on the train split with early stopping /
    penalty choice on the val split, and evaluated on the test split.

    Parameters
    ----------
    patches_store
        Zarr patch store (``kappa(sample, bin, y, x)``, split by cosmology).
    output_json
        Result file, written atomically: per regressor ``mse_standardised`` and ``mse``
        (physical units) per target on the test split, ``n_maps`` per split, the options, the
        multipole and height bins, the peak scale, timings (seconds) and the store's provenance.
    config
        Options: the ``summary_statistics`` config section, any subset (see
        :func:`~cosmo_sop.summary_statistics.options.resolve_summary_config`).
    workers
        Threads for the feature computation.

    Returns
    -------
    dict
        The JSON content (an MSE that is not finite is null). With ``save_predictions``,
        ``output_json`` with suffix ``.npz`` holds ``names``, ``sample`` (test store indices),
        ``true`` and ``predicted_<regressor>`` ``(n_test, n_targets)`` in physical units.

    Raises
    ------
    InputError
        For a missing or malformed store, bad options, or maps whose statistics are not finite.
    """
    cfg = resolve_summary_config(config)
    output_json = Path(output_json)
    if cfg["save_predictions"] and output_json.suffix == ".npz":
        raise InputError(output_json, "must not end in .npz (the predictions go to <name>.npz)")
    store = _open_store(patches_store)
    ell_edges, binning = _multipole_bins(store, cfg)
    blocks, ranges = _chunk_tasks(store.data, cfg["chunk_samples"])
    scheduler = {"scheduler": "threads", "num_workers": max(1, int(workers))}

    t0 = time.perf_counter()
    peak_scale = _peak_scale(store, blocks, ranges, cfg, scheduler)
    t1 = time.perf_counter()
    features = _features(store, blocks, peak_scale, cfg, scheduler)
    t2 = time.perf_counter()
    fits = _fit_and_test(store, features, cfg)

    timing = {
        "peak_scale": t1 - t0,
        "features": t2 - t1,
        "features_per_1000_maps": (t2 - t1) * 1000 / store.data.n_samples,
        "fit": fits.seconds,
        "workers": int(workers),
    }
    result = _record(store, cfg, fits, features, peak_scale, (ell_edges, binning), timing)
    if cfg["save_predictions"]:
        result["predictions"] = str(_write_predictions(output_json.with_suffix(".npz"), fits))
    write_json(output_json, result)
    return result


# --------------------------------------------------------------------------------------------
# The store


@dataclass(frozen=True)
class _Store:
    """A patch store with what the analysis needs of it."""

    path: Path
    data: PatchData
    scaler: LabelScaler  # of the train split's labels
    split_index: dict[str, np.ndarray]  # store indices of each split
    pixel_arcmin: float
    shape: tuple[int, int]  # (H, W) pixels
    bins: list[int]  # 1-based tomographic bin labels


def _open_store(patches_store: str | os.PathLike) -> _Store:
    path = Path(patches_store)
    data = PatchData(path)
    scaler = data.scaler()
    split_index = {split: data.indices(split) for split in SPLITS}
    try:
        pixel_arcmin = float(data.ds.attrs["pixel_scale_arcmin"])
    except (KeyError, TypeError, ValueError):
        raise InputError(
            path, "attribute 'pixel_scale_arcmin' is missing or not a number"
        ) from None
    if not pixel_arcmin > 0:
        raise InputError(path, f"attribute 'pixel_scale_arcmin' must be > 0, got {pixel_arcmin}")
    shape = (int(data.ds.sizes["y"]), int(data.ds.sizes["x"]))
    if "bin" in data.ds.coords:
        bins = [int(b) for b in np.asarray(data.ds["bin"].values)]
    else:  # the contract has 1-based bin labels; number the channels so without them
        bins = list(range(1, data.ds.sizes["bin"] + 1))
    return _Store(path, data, scaler, split_index, pixel_arcmin, shape, bins)


def _multipole_bins(store: _Store, cfg: Mapping[str, Any]) -> tuple[np.ndarray, ModeBinning]:
    """Multipole bin edges and their Fourier modes; every bin must hold one."""
    ell_edges = ell_bin_edges(store.shape, store.pixel_arcmin, cfg["ell_bins"])
    binning = mode_binning(store.shape, store.pixel_arcmin, ell_edges)
    if np.any(binning.n_modes == 0):
        h, w = store.shape
        raise InputError(
            "summary_statistics.ell_bins",
            f"{cfg['ell_bins']} bins leave a multipole bin without Fourier modes of {h}x{w} patches",
        )
    return ell_edges, binning


def _chunk_tasks(data: PatchData, chunk_samples: int | None) -> tuple[Any, list[tuple[int, int]]]:
    """Delayed blocks of the maps and the (start, stop) store indices of each."""
    kappa = data.ds["kappa"].data
    if chunk_samples is not None:
        kappa = kappa.rechunk({0: chunk_samples})
    starts = np.cumsum((0, *kappa.chunks[0]))
    ranges = list(zip(starts[:-1].tolist(), starts[1:].tolist(), strict=True))
    return kappa.to_delayed().ravel(), ranges


# --------------------------------------------------------------------------------------------
# Pass 1: the unit of the peak heights; pass 2: the feature vectors


def _train_moments(block: np.ndarray, in_train: np.ndarray, smoothing: float) -> np.ndarray:
    """Per bin (count, mean, sum of squared deviations) of the smoothed train maps of a chunk."""
    maps = smooth_maps(block[in_train], smoothing).astype(np.float64)
    mean = maps.mean(axis=(0, 2, 3))
    squares = ((maps - mean[:, None, None]) ** 2).sum(axis=(0, 2, 3))
    return np.stack([np.full_like(mean, maps.size / maps.shape[1]), mean, squares])


def _pooled_std(moments: Sequence[np.ndarray]) -> np.ndarray:
    """Standard deviation from per-chunk (count, mean, M2) (Chan et al.'s pairwise update,
    which does not lose precision to cancellation as sum(x^2) - n mean^2 would)."""
    count, mean, m2 = moments[0]
    for other in moments[1:]:
        n_b, mean_b, m2_b = other
        total = count + n_b
        delta = mean_b - mean
        mean = mean + delta * n_b / total
        m2 = m2 + m2_b + delta**2 * count * n_b / total
        count = total
    return np.sqrt(m2 / count)


def _peak_scale(store: _Store, blocks, ranges, cfg: Mapping[str, Any], scheduler) -> np.ndarray:
    """The global height unit of each bin: the std of the smoothed train maps, (C,)."""
    is_train = store.data.split_labels == "train"
    tasks = [
        dask.delayed(_train_moments)(block, is_train[a:b], cfg["peak_smoothing_pixels"])
        for block, (a, b) in zip(blocks, ranges, strict=True)
        if is_train[a:b].any()
    ]
    with TqdmCallback(desc="peak scale (train)", leave=False, disable=not cfg["progress"]):
        peak_scale = _pooled_std(dask.compute(*tasks, **scheduler))
    if not np.all(np.isfinite(peak_scale)) or not np.all(peak_scale > 0):
        raise InputError(
            store.path,
            f"train maps have a constant or non-finite bin (std per bin {peak_scale.tolist()})",
        )
    return peak_scale


def _features(store: _Store, blocks, peak_scale, cfg: Mapping[str, Any], scheduler) -> np.ndarray:
    """The feature vectors of all maps, (N, F); every one must be finite."""
    tasks = [
        dask.delayed(summary_features)(block, store.pixel_arcmin, peak_scale, dict(cfg))
        for block in blocks
    ]
    progress = TqdmCallback(
        desc=f"summary statistics of {store.data.n_samples} maps",
        leave=False,
        disable=not cfg["progress"],
    )
    with progress:
        features = np.concatenate(dask.compute(*tasks, **scheduler), axis=0)
    bad = np.flatnonzero(~np.all(np.isfinite(features), axis=1))
    if bad.size:
        raise InputError(
            store.path,
            f"{bad.size} map(s) have non-finite summary statistics (zero power or NaN pixels), "
            f"first sample {int(bad[0])}",
        )
    return features


# --------------------------------------------------------------------------------------------
# The regressors and their test errors


@dataclass(frozen=True)
class _Fits:
    names: list[str]  # the targets, in column order
    sample: np.ndarray  # store indices of the test maps
    true: np.ndarray  # (n_test, n_targets) physical units
    predicted: dict[str, np.ndarray]  # regressor -> (n_test, n_targets) physical units
    results: dict[str, dict[str, Any]]  # regressor -> test MSE and how it was fitted
    seconds: dict[str, float]  # regressor -> fit time


def _mse(pred: np.ndarray, true: np.ndarray, names: Sequence[str]) -> dict[str, float | None]:
    errors = ((pred - true) ** 2).mean(axis=0).tolist()
    return {name: finite_or_none(error) for name, error in zip(names, errors, strict=True)}


def _fit_and_test(store: _Store, features: np.ndarray, cfg: Mapping[str, Any]) -> _Fits:
    """Every regressor of the options, fitted on train (val for its choices), tested on test."""
    names = list(store.scaler.names)
    index = store.split_index
    y = {
        split: np.asarray(store.scaler.transform(store.data.labels[i]))
        for split, i in index.items()
    }
    x = {split: features[i] for split, i in index.items()}
    true = store.data.labels[index["test"]]
    results, predicted, seconds = {}, {}, {}
    for kind in cfg["regressors"]:
        start = time.perf_counter()
        regressor = fit_summary_regressor(
            x["train"], y["train"], x["val"], y["val"], cfg["seed"], kind=kind, config=cfg
        )
        seconds[kind] = time.perf_counter() - start
        pred = regressor.predict(x["test"])
        predicted[kind] = np.asarray(store.scaler.inverse_transform(pred))
        info = dict(regressor.info)
        info["val_mse"] = finite_or_none(info["val_mse"])  # inf if no step had a finite loss
        results[kind] = {
            "mse_standardised": _mse(pred, y["test"], names),
            "mse": _mse(predicted[kind], true, names),
            "fit": info,
        }
    return _Fits(names, index["test"], true, predicted, results, seconds)


def _record(
    store: _Store,
    cfg: Mapping[str, Any],
    fits: _Fits,
    features: np.ndarray,
    peak_scale: np.ndarray,
    multipoles: tuple[np.ndarray, ModeBinning],
    timing: Mapping[str, Any],
) -> dict[str, Any]:
    """The content of summary_statistics.json (the first regressor's errors at the top)."""
    main = cfg["regressors"][0]
    ell_edges, binning = multipoles
    return {
        "regressor": main,
        "mse_standardised": fits.results[main]["mse_standardised"],
        "mse": fits.results[main]["mse"],
        "regressors": fits.results,
        "targets": fits.names,
        "n_maps": {split: int(idx.size) for split, idx in store.split_index.items()},
        "n_features": int(features.shape[1]),
        "feature_names": feature_names(store.bins, cfg),
        "ell_edges": ell_edges.tolist(),
        "ell_effective": binning.ell_effective.tolist(),
        "snr_edges": snr_edges(cfg).tolist(),
        "peak_scale": dict(zip([str(b) for b in store.bins], peak_scale.tolist(), strict=True)),
        "label_scaler": store.scaler.state_dict(),
        "config": cfg,
        "timing_s": dict(timing),
        "provenance": store.data.provenance(),
        "cosmo_sop_version": __version__,
    }


def _write_predictions(path: Path, fits: _Fits) -> Path:
    """The test predictions of every regressor, atomically, as ``.npz``."""
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        # A file handle, because np.savez would append ".npz" to the temporary name.
        np.savez(
            handle,
            names=np.asarray(fits.names),
            sample=fits.sample,
            true=fits.true,
            **{f"predicted_{kind}": pred for kind, pred in fits.predicted.items()},
        )
    return path
