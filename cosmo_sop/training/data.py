"""Torch datasets of flat kappa patches read from the cosmo-sop Zarr stores.

A patch store (``kappa(sample, bin, y, x)``, see the Zarr contract in the README) and, for the
Sum-of-Parts model, the segmentation store of the same samples (``segments(sample, y, x)``) are
opened together by :class:`PatchData`, which checks that both hold the same samples, selects a
split (``train``/``val``/``test``, split by cosmology upstream) and hands out
:class:`PatchDataset` objects whose batches are dicts::

    {"kappa": (B, C, H, W) float32, "segments": (B, H, W) int64 (if a segments store is given),
     "target": (B, 2) float32 standardised (Om, s8), "sample": (B,) int64 store indices}

Targets are standardised with the mean and standard deviation of the *train* split only
(:class:`~cosmo_sop.models.targets.LabelScaler`), whose state is saved next to the trained
weights.

A split that fits the memory budget is read once into one contiguous tensor (an epoch is then a
few tensor gathers); a larger one is read lazily, batch by batch, and
:class:`~cosmo_sop.training.batches.EpochBatchSampler` keeps each batch within few Zarr chunks
so that every chunk is decompressed about once per epoch.
"""

from __future__ import annotations

import json
import os
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import zarr
from tqdm.auto import tqdm
from tqdm.dask import TqdmCallback

from cosmo_sop.config import defaults
from cosmo_sop.errors import InputError
from cosmo_sop.models.targets import TARGETS, LabelScaler
from cosmo_sop.storage import open_zarr

#: Coordinates that identify a sample; a segments store must match the patch store on all of them.
SAMPLE_KEYS: tuple[str, ...] = ("cosmology", "perm", "patch_index")

#: The splits of a patch store (by cosmology, made by ``ingest``).
SPLITS: tuple[str, ...] = ("train", "val", "test")

_GIB = 1024**3

#: Decoded Zarr chunks kept per array by a lazily read dataset. Batches are drawn chunk by chunk
#: (see EpochBatchSampler), so two suffice for each chunk to be decoded about once per epoch.
_CACHED_CHUNKS = 2


# --------------------------------------------------------------------------------------------
# Stores
# --------------------------------------------------------------------------------------------


class PatchData:
    """A patch store, optionally with the segmentation store of the same samples.

    Parameters
    ----------
    kappa_store
        Zarr store with ``kappa(sample, bin, y, x)`` and the sample coordinates.
    segments_store
        Optional Zarr store with ``segments(sample, y, x)`` of the same samples, in the same order.
    targets
        Sample coordinates regressed, in output order.

    Raises
    ------
    InputError
        If a store is missing or malformed, or the two stores do not hold the same samples.
    """

    def __init__(
        self,
        kappa_store: str | os.PathLike,
        segments_store: str | os.PathLike | None = None,
        targets: Sequence[str] = TARGETS,
    ) -> None:
        self.kappa_store = Path(kappa_store)
        self.segments_store = None if segments_store is None else Path(segments_store)
        self.targets = tuple(targets)
        self.ds = open_zarr(self.kappa_store, ("kappa", "split", *self.targets, *SAMPLE_KEYS))
        kappa = self.ds["kappa"]
        if kappa.dims != ("sample", "bin", "y", "x"):
            raise InputError(
                self.kappa_store, f"kappa has dims {kappa.dims}, expected (sample, bin, y, x)"
            )
        if kappa.dtype != np.float32:
            raise InputError(self.kappa_store, f"kappa has dtype {kappa.dtype}, expected float32")
        self.split_labels = np.asarray(self.ds["split"].values).astype(str)
        unknown = sorted(set(self.split_labels) - set(SPLITS))
        if unknown:
            raise InputError(self.kappa_store, f"split coordinate has unknown value(s) {unknown}")
        self.labels = np.stack(
            [np.asarray(self.ds[t].values, np.float64) for t in self.targets], axis=1
        )
        if not np.all(np.isfinite(self.labels)):
            raise InputError(
                self.kappa_store, f"target coordinate(s) {self.targets} hold non-finite values"
            )
        self.seg_ds = None
        if self.segments_store is not None:
            self.seg_ds = open_zarr(self.segments_store, ("segments", *SAMPLE_KEYS))
            self._check_same_samples()

    def _check_same_samples(self) -> None:
        seg = self.seg_ds["segments"]
        where = f"{self.segments_store} (with {self.kappa_store})"
        if seg.dims != ("sample", "y", "x"):
            raise InputError(where, f"segments has dims {seg.dims}, expected (sample, y, x)")
        if not np.issubdtype(seg.dtype, np.integer):
            raise InputError(where, f"segments has dtype {seg.dtype}, expected integers")
        kappa_shape = {d: self.ds.sizes[d] for d in ("sample", "y", "x")}
        seg_shape = {d: self.seg_ds.sizes[d] for d in ("sample", "y", "x")}
        if kappa_shape != seg_shape:
            raise InputError(
                where, f"segments sizes {seg_shape} differ from kappa sizes {kappa_shape}"
            )
        for key in SAMPLE_KEYS:
            a = np.asarray(self.ds[key].values)
            b = np.asarray(self.seg_ds[key].values)
            if a.dtype.kind in "US" or b.dtype.kind in "US" or a.dtype == object:
                a, b = a.astype(str), b.astype(str)
            mismatch = np.flatnonzero(a != b)
            if mismatch.size:
                i = int(mismatch[0])
                raise InputError(
                    where,
                    f"not the same samples: coordinate '{key}' differs at {mismatch.size} sample(s), "
                    f"first at sample {i} ({b[i]!r} vs {a[i]!r})",
                )

    @property
    def n_samples(self) -> int:
        return int(self.ds.sizes["sample"])

    def indices(self, split: str) -> np.ndarray:
        """Store indices (int64, ascending) of the samples in ``split``."""
        if split not in SPLITS:
            raise InputError(self.kappa_store, f"unknown split {split!r}; expected one of {SPLITS}")
        idx = np.flatnonzero(self.split_labels == split)
        if idx.size == 0:
            raise InputError(self.kappa_store, f"split {split!r} has no samples")
        return idx

    def scaler(self) -> LabelScaler:
        """The target standardisation fitted on the train split only."""
        try:
            return LabelScaler.fit(self.labels[self.indices("train")], self.targets)
        except InputError as exc:
            raise InputError(self.kappa_store, exc.problem) from None

    def bin_std(self, split: str = "train") -> np.ndarray:
        """Standard deviation of kappa per tomographic bin over ``split``, shape ``(n_bins,)``.

        Convergence maps have amplitudes of ~1e-3 to 1e-2; a network with default initialisation
        barely learns from inputs this small, so models should divide their input by this
        (train-split) scale, e.g. as a fixed buffer saved with their weights. Computed chunk by
        chunk in float64 (no split is loaded whole).
        """
        kappa = self.ds["kappa"].isel(sample=self.indices(split)).astype(np.float64)
        with TqdmCallback(desc=f"kappa std per bin ({split})", leave=False):
            std = np.asarray(kappa.std(dim=("sample", "y", "x")).values)
        if not np.all(std > 0):  # all-zero or constant maps: the models would divide by zero
            bins = self.ds["bin"].values if "bin" in self.ds.coords else np.arange(std.size) + 1
            flat = [int(b) for b, s in zip(bins, std, strict=True) if not s > 0]
            raise InputError(
                self.kappa_store,
                f"kappa of the {split} split is the same in every pixel of bin(s) {flat} "
                "(zero or constant maps): nothing to learn from",
            )
        return std

    def provenance(self) -> dict[str, Any]:
        """What a trained model was trained on: stores, noise level, segmentation, geometry."""
        attrs = self.ds.attrs
        info: dict[str, Any] = {
            "kappa_store": str(self.kappa_store.resolve()),
            "segments_store": None
            if self.segments_store is None
            else str(self.segments_store.resolve()),
            "patch_size": [int(self.ds.sizes["y"]), int(self.ds.sizes["x"])],
            "bins": [int(b) for b in np.asarray(self.ds["bin"].values)]
            if "bin" in self.ds.coords
            else None,
            "n_samples": {s: int(np.sum(self.split_labels == s)) for s in SPLITS},
            "targets": list(self.targets),
        }
        for key in (
            "pixel_scale_arcmin",
            "pixel_scale",
            "nside",
            "source",
            "noise_level",
            "sigma_pix",
            "cosmo_sop_version",
        ):
            if key in attrs:
                info[key] = _plain(attrs[key])
        for key in ("noise", "config"):
            if key in attrs:
                info[key] = _parse_json(attrs[key])
        if self.seg_ds is not None and "segmentation" in self.seg_ds.attrs:
            info["segmentation"] = _parse_json(self.seg_ds.attrs["segmentation"])
        return info

    def dataset(
        self,
        split: str,
        scaler: LabelScaler | None = None,
        memory_budget_gib: float | None = None,
        max_samples: int | None = None,
        seed: int | None = None,
    ) -> PatchDataset:
        """The samples of ``split`` as a torch dataset.

        Parameters
        ----------
        split
            ``"train"``, ``"val"`` or ``"test"``.
        scaler
            Target standardisation; by default the one fitted on the train split.
        memory_budget_gib
            The split is read into memory once if its maps (and segments) take at most this many
            GiB, else lazily by Zarr chunk (None: the config schema's
            ``training.memory_budget_gib``).
        max_samples
            Keep at most this many samples of the split, drawn at random (fixed by ``seed``) and
            kept in store order; None keeps all.
        seed
            Seed of that draw (None: the config schema's master ``seed``).
        """
        if memory_budget_gib is None:
            memory_budget_gib = defaults("training")["memory_budget_gib"]
        scaler = self.scaler() if scaler is None else scaler
        idx = self.indices(split)
        if max_samples is not None and max_samples < idx.size:
            if seed is None:
                seed = defaults("seed")
            idx = np.sort(
                np.random.default_rng([seed, idx.size]).choice(idx, max_samples, replace=False)
            )
        c, h, w = (self.ds.sizes[d] for d in ("bin", "y", "x"))
        nbytes = idx.size * c * h * w * 4 + (0 if self.seg_ds is None else idx.size * h * w * 4)
        return PatchDataset(
            kappa_store=self.kappa_store,
            segments_store=self.segments_store,
            sample_indices=idx,
            targets=np.asarray(scaler.transform(self.labels[idx]), dtype=np.float32),
            scaler=scaler,
            provenance=self.provenance() | {"split": split},
            in_memory=nbytes <= memory_budget_gib * _GIB,
        )


def _plain(value: Any) -> Any:
    """Attributes as JSON-serialisable Python values."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return value


def _parse_json(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value
    return _plain(value)


# --------------------------------------------------------------------------------------------
# Dataset
# --------------------------------------------------------------------------------------------


class PatchDataset(torch.utils.data.Dataset):
    """The samples of one split; items and batches are dicts of tensors.

    ``dataset[i]`` gives one sample (``kappa`` (C, H, W), ``segments`` (H, W), ``target`` (2,),
    ``sample``); ``dataset.__getitems__(indices)``, which :class:`torch.utils.data.DataLoader`
    calls for a whole batch, gives the batch at once (one gather in memory, or one Zarr selection),
    so no per-sample Python work is done while training. Use
    :func:`~cosmo_sop.training.batches.collate_batch` as the DataLoader's ``collate_fn``.

    Attributes
    ----------
    scaler
        The :class:`LabelScaler` of ``target``.
    provenance
        Store paths and attributes (see :meth:`PatchData.provenance`).
    read_groups
        Zarr chunk of each item when read lazily (for
        :class:`~cosmo_sop.training.batches.EpochBatchSampler`), else None.
    """

    def __init__(
        self,
        kappa_store: Path,
        segments_store: Path | None,
        sample_indices: np.ndarray,
        targets: np.ndarray,
        scaler: LabelScaler,
        provenance: dict[str, Any],
        in_memory: bool,
    ) -> None:
        self.kappa_store = kappa_store
        self.segments_store = segments_store
        self.sample_indices = np.asarray(sample_indices, dtype=np.int64)
        self.targets = torch.from_numpy(np.ascontiguousarray(targets, dtype=np.float32))
        self.scaler = scaler
        self.provenance = provenance
        self.in_memory = in_memory
        self._arrays: dict[str, zarr.Array] = {}
        self._chunks: OrderedDict[tuple[str, int], np.ndarray] = OrderedDict()
        kappa = self._array("kappa")
        self.read_groups = None if in_memory else self.sample_indices // kappa.chunks[0]
        self._kappa: torch.Tensor | None = None
        self._segments: torch.Tensor | None = None
        if in_memory:
            self._kappa = torch.from_numpy(self._read_all("kappa"))
            if segments_store is not None:
                self._segments = torch.from_numpy(self._read_all("segments"))

    def _array(self, name: str) -> zarr.Array:
        # Opened on first use in each process (DataLoader workers reopen after unpickling).
        if name not in self._arrays:
            store = self.kappa_store if name == "kappa" else self.segments_store
            try:
                self._arrays[name] = zarr.open_array(store=str(store), path=name, mode="r")
            except Exception as exc:  # zarr raises many types for unreadable stores
                raise InputError(
                    store, f"cannot read array '{name}' ({type(exc).__name__}: {exc})"
                ) from None
        return self._arrays[name]

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_arrays"] = {}
        state["_chunks"] = OrderedDict()
        return state

    def _read_all(self, name: str) -> np.ndarray:
        """Read this split's rows of a store array, chunk by chunk (contiguous in memory)."""
        array = self._array(name)
        step = array.chunks[0]
        out = np.empty((self.sample_indices.size, *array.shape[1:]), dtype=array.dtype)
        chunk_of = self.sample_indices // step
        starts = np.flatnonzero(np.r_[True, chunk_of[1:] != chunk_of[:-1]])
        stops = np.r_[starts[1:], chunk_of.size]
        pairs = list(zip(starts, stops, strict=True))
        for start, stop in tqdm(pairs, desc=f"reading {name}", unit="chunk", leave=False):
            first = int(chunk_of[start]) * step
            block = array[first : min(first + step, array.shape[0])]
            out[start:stop] = block[self.sample_indices[start:stop] - first]
        return out

    def __len__(self) -> int:
        return int(self.sample_indices.size)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        batch = self.__getitems__([index])
        return {key: value[0] for key, value in batch.items()}

    def __getitems__(self, indices: Sequence[int]) -> dict[str, torch.Tensor]:
        pos = np.asarray(indices, dtype=np.int64)
        if pos.size and (pos.min() < -len(self) or pos.max() >= len(self)):
            raise IndexError(f"index out of range for a dataset of {len(self)} samples")
        pos_t = torch.from_numpy(pos % max(len(self), 1))
        batch = {
            "target": self.targets[pos_t],
            "sample": torch.from_numpy(self.sample_indices[pos_t.numpy()]),
        }
        if self.in_memory:
            batch["kappa"] = self._kappa[pos_t]
            if self._segments is not None:
                batch["segments"] = self._segments[pos_t].long()
        else:
            rows = self.sample_indices[pos_t.numpy()]
            batch["kappa"] = torch.from_numpy(self._read_rows("kappa", rows))
            if self.segments_store is not None:
                batch["segments"] = torch.from_numpy(
                    self._read_rows("segments", rows).astype(np.int64)
                )
        return batch

    def _read_rows(self, name: str, rows: np.ndarray) -> np.ndarray:
        """Rows of a store array, decoding each Zarr chunk once while it stays in the cache."""
        array = self._array(name)
        step = array.chunks[0]
        chunk_of = rows // step
        out = np.empty((rows.size, *array.shape[1:]), dtype=array.dtype)
        for chunk in np.unique(chunk_of).tolist():
            key = (name, chunk)
            if key in self._chunks:
                self._chunks.move_to_end(key)
            else:
                self._chunks[key] = array[chunk * step : (chunk + 1) * step]
                if sum(k[0] == name for k in self._chunks) > _CACHED_CHUNKS:
                    del self._chunks[next(k for k in self._chunks if k[0] == name)]
            here = chunk_of == chunk
            out[here] = self._chunks[key][rows[here] - chunk * step]
        return out
