"""The explanation store: a trained SOP model's groups and weights for every map of a split.

:func:`explain_split` runs a trained SOP model (:func:`cosmo_sop.models.trained.load_sop`) over
one split of a patch store, batch by batch, and writes what it predicts and why to one Zarr store
(``results/<noise level>/explanations.zarr``, :func:`cosmo_sop.layout.explanations`), the input
of the science steps (:mod:`cosmo_sop.structures.run`, :mod:`cosmo_sop.faithfulness.run`), which
read it with :func:`open_explanations`, find its maps with :func:`patches_for` and
:func:`kappa_rows`::

    dims        sample, group (m), output ("Om", "s8"), y, x, and segment (S) or token (T)
    prediction  (sample, output)          float64, physical units of Omega_m and sigma_8
    target      (sample, output)          float64, the true parameters of the map
    scores      (sample, group, output)   float64, group weights c >= 0, summing to 1 over groups
    partial     (sample, group, output)   float64, physical units: the backbone's prediction on
                                          the group's pixels alone (zero elsewhere)
    masks       (sample, group, y, x)     bool, the pixels of every group
    valid       (sample, group)           bool, False for groups SOP could not fill
    pixel_count (sample, group)           int64, pixels in every group
    group_segments (sample, group, segment)  bool, watershed segments of every group
                                          (segment tokens), or
    group_tokens   (sample, group, token)    bool, grid cells of every group (patch tokens)

``prediction == (scores * partial).sum("group")`` holds to float rounding for every map and
output. Along ``sample`` the store carries the patch store's coordinates of the explained maps
(``Om``, ``s8``, ``cosmology``, ``perm``, ``patch_index``, ``split``, ...) and ``store_index``,
the row of each map in the patch store. Its attributes name the model folder, the stores and the
data the model was trained on (noise level, segmentation, tokens).

Example::

    from cosmo_sop.explain import explain_split

    explain_split(
        "results/noiseless/models/sop",
        "results/noiseless/patches.zarr",
        "results/noiseless/explanations.zarr",
        "results/noiseless/segments.zarr",
        batch_size=32,
    )
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
import torch
import xarray as xr
from tqdm.auto import tqdm

from cosmo_sop import __version__
from cosmo_sop.config import with_defaults
from cosmo_sop.errors import InputError
from cosmo_sop.layout import WEIGHTS
from cosmo_sop.models.tokens import patch_token_map
from cosmo_sop.models.trained import SOPExplanation, TrainedSOP, check_provenance, load_sop
from cosmo_sop.storage import ZARR_FORMAT, atomic_path, open_zarr
from cosmo_sop.training.batches import EpochBatchSampler, collate_batch
from cosmo_sop.training.data import SAMPLE_KEYS, PatchData

#: Variables every explanation store holds (besides the token membership).
VARIABLES: tuple[str, ...] = (
    "prediction",
    "target",
    "scores",
    "partial",
    "masks",
    "valid",
    "pixel_count",
    "store_index",
)

_DESCRIPTIONS = {
    "prediction": "SOP prediction, physical units; equals sum over groups of scores * partial",
    "target": "true parameter value of the map, physical units",
    "scores": "group weight c >= 0 per output (sparsemax); sums to 1 over the groups",
    "partial": "backbone prediction on the group's pixels alone (zero elsewhere), physical units",
    "masks": "pixels of each group",
    "valid": "False for groups SOP could not fill (empty mask, zero score and partial)",
    "pixel_count": "number of pixels in each group",
    "group_segments": "watershed segment labels (of the segments store) in each group",
    "group_tokens": "grid cells (row * grid + column) in each group",
}


def explain_split(
    sop_dir: str | os.PathLike,
    patches_store: str | os.PathLike,
    output_store: str | os.PathLike,
    segments_store: str | os.PathLike | None = None,
    **options: Any,
) -> Path:
    """Write the explanation store of a trained SOP model on one split of a patch store.

    Parameters
    ----------
    sop_dir
        Run folder of a trained SOP model (``model.safetensors`` + ``model.json``).
    patches_store
        Patch store of the noise level the model was trained on.
    output_store
        Zarr store to write (atomically: it appears only once complete).
    segments_store
        Segmentation of the same maps; required when the model groups watershed segments
        (config ``sop.tokens: segments``), ignored for patch tokens.
    **options
        The config section ``explain``; keys left out take the schema's defaults:
        ``split`` (``"train"``, ``"val"`` or ``"test"``), ``batch_size`` (maps read and
        explained at a time; bounds memory, as the SOP runs ``n_groups`` backbone passes per
        map), ``max_maps`` (explain only the first ``max_maps`` maps of the split, in store
        order; None: all).

    Returns
    -------
    Path
        ``output_store``.

    Raises
    ------
    InputError
        If an option fails the config schema, the model or a store is missing or malformed, the
        model was trained on another noise level, segmentation, patch size or set of bins
        (naming the model, the store and the setting), or it needs segments that were not
        given. Nothing is written then.
    """
    options = with_defaults("explain", options)
    split = options["split"]
    sop = load_sop(sop_dir)
    data = _checked_data(sop, Path(sop_dir) / WEIGHTS, patches_store, segments_store)
    rows = data.indices(split)
    if options["max_maps"] is not None:
        rows = rows[: options["max_maps"]]
    batch_size = options["batch_size"]
    dataset = data.dataset(split, sop.scaler, memory_budget_gib=0.0)  # read lazily, by batch
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_sampler=EpochBatchSampler(rows.size, batch_size, shuffle=False),
        collate_fn=collate_batch,
    )
    n_members = _n_members(sop, data, rows)
    template = _template(sop, data, rows, n_members, batch_size, sop_dir, split)

    with atomic_path(output_store) as tmp:
        # Metadata and coordinates first, then the variables batch by batch into their regions
        # of the store, so no more than one batch of maps and groups is ever in memory.
        template.to_zarr(tmp, mode="w", zarr_format=ZARR_FORMAT, consolidated=True, compute=False)
        start = 0
        for batch in tqdm(loader, desc=f"explaining {split} maps", unit="batch"):
            segments = batch.get("segments")
            segments = None if segments is None else segments.numpy()
            parts = _explain(sop, batch["kappa"].numpy(), segments, data)
            stop = start + len(parts.prediction)
            if not np.array_equal(batch["sample"].numpy(), rows[start:stop]):
                raise RuntimeError("batches out of order")  # a bug, not bad input
            region = {"sample": slice(start, stop)}
            _batch_dataset(sop, parts, n_members).to_zarr(tmp, region=region)
            start = stop
    return Path(output_store)


def _checked_data(
    sop: TrainedSOP,
    model_file: Path,
    patches_store: str | os.PathLike,
    segments_store: str | os.PathLike | None,
) -> PatchData:
    """The stores to explain, refused unless they hold the data the model was trained on."""
    if sop.tokens == "segments" and segments_store is None:
        raise InputError(
            model_file,
            "groups watershed segments (sop.tokens = 'segments'): give the segments store "
            f"of {patches_store} (--segments)",
        )
    data = PatchData(patches_store, segments_store if sop.tokens == "segments" else None)
    check_provenance(sop.sidecar, data, model_file)
    if tuple(sop.scaler.names) != data.targets:
        raise InputError(
            model_file,
            f"predicts {list(sop.scaler.names)}, the store's targets are {list(data.targets)}",
        )
    return data


def _explain(
    sop: TrainedSOP, kappa: np.ndarray, segments: np.ndarray | None, data: PatchData
) -> SOPExplanation:
    try:
        return sop.explain(kappa, segments)
    except ValueError as exc:  # malformed segment labels, e.g. negative
        raise InputError(data.segments_store or data.kappa_store, str(exc)) from None


def _n_members(sop: TrainedSOP, data: PatchData, rows: np.ndarray) -> int:
    """Size of the token axis: segments (largest label of the split + 1) or grid cells."""
    if sop.tokens == "patches":
        return int(sop.model.patch_tokens) ** 2
    labels = data.seg_ds["segments"].isel(sample=rows)
    return int(labels.max().compute()) + 1


def _membership(sop: TrainedSOP, parts: SOPExplanation, n_members: int) -> np.ndarray:
    """bool (B, m, n_members): the segments or grid cells that make up every group."""
    n, m, height, width = parts.masks.shape
    out = np.zeros((n * m, n_members), dtype=bool)
    if parts.group_segments is not None:
        # The model's own token lists (ragged: one array of labels per group), scattered at once.
        members = [labels for groups in parts.group_segments for labels in groups]
        group = np.repeat(np.arange(n * m), [len(labels) for labels in members])
        out[group, np.concatenate(members).astype(np.int64)] = True
        return out.reshape(n, m, n_members)
    # Patch tokens: a group's mask is exactly the union of its grid cells, so the first pixel
    # of every cell tells whether the cell belongs to the group.
    cells = patch_token_map(height, width, int(sop.model.patch_tokens)).numpy().ravel()
    _, first_pixel = np.unique(cells, return_index=True)
    return parts.masks.reshape(n, m, height * width)[:, :, first_pixel]


def _batch_dataset(sop: TrainedSOP, parts: SOPExplanation, n_members: int) -> xr.Dataset:
    member_dim = "segment" if sop.tokens == "segments" else "token"
    return xr.Dataset(
        {
            "prediction": (("sample", "output"), parts.prediction.astype(np.float64)),
            "scores": (("sample", "group", "output"), parts.scores.astype(np.float64)),
            "partial": (("sample", "group", "output"), parts.partial.astype(np.float64)),
            "masks": (("sample", "group", "y", "x"), parts.masks.astype(bool)),
            "valid": (("sample", "group"), parts.valid.astype(bool)),
            "pixel_count": (("sample", "group"), parts.masks.sum(axis=(2, 3)).astype(np.int64)),
            f"group_{member_dim}s": (
                ("sample", "group", member_dim),
                _membership(sop, parts, n_members),
            ),
        }
    )


def _template(
    sop: TrainedSOP,
    data: PatchData,
    rows: np.ndarray,
    n_members: int,
    batch_size: int,
    sop_dir: str | os.PathLike,
    split: str,
) -> xr.Dataset:
    """The store's layout: lazy (unwritten) variables, and the coordinates and attributes."""
    n = rows.size
    m = int(sop.model.config["n_groups"])
    height, width = (int(data.ds.sizes[d]) for d in ("y", "x"))
    member_dim = "segment" if sop.tokens == "segments" else "token"
    n_out = len(data.targets)

    def lazy(shape: tuple[int, ...], dtype: Any) -> da.Array:
        return da.zeros(shape, dtype=dtype, chunks=(min(batch_size, n), *shape[1:]))

    variables = {
        "prediction": (("sample", "output"), lazy((n, n_out), np.float64)),
        "scores": (("sample", "group", "output"), lazy((n, m, n_out), np.float64)),
        "partial": (("sample", "group", "output"), lazy((n, m, n_out), np.float64)),
        "masks": (("sample", "group", "y", "x"), lazy((n, m, height, width), bool)),
        "valid": (("sample", "group"), lazy((n, m), bool)),
        "pixel_count": (("sample", "group"), lazy((n, m), np.int64)),
        f"group_{member_dim}s": (("sample", "group", member_dim), lazy((n, m, n_members), bool)),
        "target": (("sample", "output"), data.labels[rows]),
    }
    ds = xr.Dataset(variables)
    for name, value in ds.data_vars.items():
        value.attrs["description"] = _DESCRIPTIONS[name]
        if name in ("prediction", "target", "partial"):
            value.attrs["units"] = "physical units of each output (dimensionless parameters)"

    sample_coords = {
        name: ("sample", np.asarray(coord.values)[rows])
        for name, coord in data.ds.coords.items()
        if coord.dims == ("sample",)
    }
    ds = ds.assign_coords(
        {
            **sample_coords,
            "store_index": ("sample", rows.astype(np.int64)),
            "output": list(data.targets),
            "group": np.arange(m, dtype=np.int64),
            member_dim: np.arange(n_members, dtype=np.int64),
        }
    )
    ds["store_index"].attrs["description"] = "row of the map in the patch store"
    ds.attrs.update(_attributes(sop, data, sop_dir, split))
    return ds


def _attributes(
    sop: TrainedSOP, data: PatchData, sop_dir: str | os.PathLike, split: str
) -> dict[str, Any]:
    trained = sop.sidecar["data"]["train"]
    store = data.ds.attrs
    attrs = {
        "sop_dir": str(Path(sop_dir).resolve()),
        "patches_store": str(data.kappa_store.resolve()),
        "segments_store": "" if data.segments_store is None else str(data.segments_store.resolve()),
        "split": split,
        "tokens": sop.tokens,
        "n_groups": int(sop.model.config["n_groups"]),
        "noise_level": str(trained.get("noise_level", store.get("noise_level", ""))),
        "noise": json.dumps(trained.get("noise")),
        "segmentation": json.dumps(trained.get("segmentation")),
        "sop_config": json.dumps(sop.model.config, default=str),
        "label_scaler": json.dumps(sop.scaler.state_dict()),
        "cosmo_sop_version": __version__,
    }
    for key in ("pixel_scale_arcmin", "pixel_scale", "source"):
        if key in store:
            attrs[key] = store[key]
    return attrs


# --------------------------------------------------------------------------------------------
# Reading the stores


def open_explanations(path: str | os.PathLike) -> xr.Dataset:
    """Open an explanation store lazily, refusing one that lacks a variable of the contract."""
    ds = open_zarr(path, VARIABLES)
    if tuple(ds["scores"].dims) != ("sample", "group", "output"):
        raise InputError(
            path, f"scores has dims {ds['scores'].dims}, expected (sample, group, output)"
        )
    if ds.sizes["sample"] == 0:
        raise InputError(path, "holds no explained maps")
    return ds


def patches_for(
    explanations: xr.Dataset,
    where: str | os.PathLike,
    patches_store: str | os.PathLike,
    segments_store: str | os.PathLike | None = None,
) -> PatchData:
    """The patch store the explanations were made from, checked map by map and by noise level."""
    data = PatchData(patches_store, segments_store)
    rows = np.asarray(explanations["store_index"].values)
    if rows.min() < 0 or rows.max() >= data.n_samples:
        raise InputError(
            where,
            f"store_index reaches row {rows.max()}, {patches_store} has "
            f"{data.n_samples} maps: not the patch store these explanations came from",
        )
    for key in SAMPLE_KEYS:
        if key not in explanations.coords:
            raise InputError(where, f"lacks the sample coordinate {key!r}")
        ours = np.asarray(explanations[key].values).astype(str)
        theirs = np.asarray(data.ds[key].values)[rows].astype(str)
        differ = np.flatnonzero(ours != theirs)
        if differ.size:
            raise InputError(
                where,
                f"map {differ[0]} is {key} = {ours[differ[0]]!r}, but row {rows[differ[0]]} "
                f"of {patches_store} has {theirs[differ[0]]!r}: not the store they were made from",
            )
    now = data.provenance()
    for key in ("noise_level", "noise"):
        made = explanations.attrs.get(key)
        if isinstance(made, str) and key == "noise":
            made = json.loads(made)
        if made is not None and now.get(key) is not None and made != now.get(key):
            raise InputError(
                where,
                f"was made on data with {key} = {json.dumps(made)}, but {patches_store} "
                f"has {json.dumps(now.get(key))}",
            )
    return data


def kappa_rows(data: PatchData, rows: np.ndarray) -> np.ndarray:
    """kappa (len(rows), C, H, W) float32 of the given patch-store rows, read chunk-wise."""
    return np.asarray(data.ds["kappa"].isel(sample=np.asarray(rows)).values)
