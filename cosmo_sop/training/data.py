"""Torch datasets of flat kappa patches read from the cosmo-sop Zarr stores.

A patch store (``kappa(sample, bin, y, x)``, see the Zarr contract in the README) and, for the
Sum-of-Parts model, the segmentation store of the same samples (``segments(sample, y, x)``) are
opened together by :class:`PatchData`, which checks that both hold the same samples, selects a
split (``train``/``val``/``test``, split by cosmology upstream) and hands out
:class:`PatchDataset` objects whose batches are dicts::

    {"kappa": (B, C, H, W) float32, "segments": (B, H, W) int64 (if a segments store is given),
     "target": (B, 2) float32 standardised (Om, s8), "sample": (B,) int64 store indices}

Targets are standardised with the mean and standard deviation of the *train* split only
(:class:`LabelScaler`), whose state is saved next to the trained weights.

A split that fits the memory budget is read once into one contiguous tensor (an epoch is then a
few tensor gathers); a larger one is read lazily, batch by batch, and :class:`EpochBatchSampler`
keeps each batch within few Zarr chunks so that every chunk is decompressed about once per epoch.

Augmentation uses the isotropy of the sky: :func:`augment_batch` applies one of the 8 symmetries
of the square (rotations by multiples of 90 degrees, and flips) per map, identically to the map
and its segments, drawn from a seeded :class:`torch.Generator`.
"""

from __future__ import annotations

import json
import os
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import zarr
from tqdm.auto import tqdm
from tqdm.dask import TqdmCallback

from cosmo_sop.errors import InputError
from cosmo_sop.storage import open_zarr

#: Coordinates along ``sample`` that the networks regress, in output order.
TARGETS: tuple[str, ...] = ("Om", "s8")

#: Coordinates that identify a sample; a segments store must match the patch store on all of them.
SAMPLE_KEYS: tuple[str, ...] = ("cosmology", "perm", "patch_index")

SPLITS: tuple[str, ...] = ("train", "val", "test")

#: Number of symmetries of the square (the dihedral group D4) used for augmentation.
N_DIHEDRAL = 8

_GIB = 1024**3

#: Decoded Zarr chunks kept per array by a lazily read dataset. Batches are drawn chunk by chunk
#: (see EpochBatchSampler), so two suffice for each chunk to be decoded about once per epoch.
_CACHED_CHUNKS = 2


# --------------------------------------------------------------------------------------------
# Label standardisation
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LabelScaler:
    """Standardisation of the regression targets: ``z = (y - mean) / std`` per output.

    Attributes
    ----------
    names
        Target names in output order, e.g. ``("Om", "s8")``.
    mean, std
        Per-output mean and standard deviation (physical units of each target), shape ``(n,)``.
    """

    names: tuple[str, ...]
    mean: np.ndarray
    std: np.ndarray

    @classmethod
    def fit(cls, labels: np.ndarray, names: Sequence[str] = TARGETS) -> LabelScaler:
        """Fit the scaler to ``labels`` of shape ``(n_samples, n_outputs)``."""
        labels = np.asarray(labels, dtype=np.float64)
        if labels.ndim != 2 or labels.shape[1] != len(names) or labels.shape[0] < 2:
            raise InputError("labels", f"need >= 2 samples of {len(names)} targets, got shape {labels.shape}")
        std = labels.std(axis=0)
        if not np.all(std > 0):
            flat = [n for n, s in zip(names, std, strict=True) if not s > 0]
            raise InputError("labels", f"target(s) {flat} are constant over the train split")
        return cls(tuple(names), labels.mean(axis=0), std)

    def transform(self, labels: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
        """Physical units -> standardised, for numpy arrays or tensors of shape ``(..., n)``."""
        mean, std = self._as(labels)
        return (labels - mean) / std

    def inverse_transform(self, standardised: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
        """Standardised -> physical units, for numpy arrays or tensors of shape ``(..., n)``."""
        mean, std = self._as(standardised)
        return standardised * std + mean

    def _as(self, like: np.ndarray | torch.Tensor) -> tuple[Any, Any]:
        if isinstance(like, torch.Tensor):
            return (
                torch.as_tensor(self.mean, dtype=like.dtype, device=like.device),
                torch.as_tensor(self.std, dtype=like.dtype, device=like.device),
            )
        return self.mean, self.std

    def state_dict(self) -> dict[str, list]:
        """JSON-serialisable state (lists of floats), for the sidecar of the trained weights."""
        return {"names": list(self.names), "mean": self.mean.tolist(), "std": self.std.tolist()}

    @classmethod
    def from_state_dict(cls, state: dict[str, list]) -> LabelScaler:
        """Inverse of :meth:`state_dict`."""
        try:
            return cls(
                tuple(state["names"]),
                np.asarray(state["mean"], dtype=np.float64),
                np.asarray(state["std"], dtype=np.float64),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise InputError("label_scaler", f"malformed label scaler state ({exc})") from None


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
            raise InputError(self.kappa_store, f"kappa has dims {kappa.dims}, expected (sample, bin, y, x)")
        if kappa.dtype != np.float32:
            raise InputError(self.kappa_store, f"kappa has dtype {kappa.dtype}, expected float32")
        self.split_labels = np.asarray(self.ds["split"].values).astype(str)
        unknown = sorted(set(self.split_labels) - set(SPLITS))
        if unknown:
            raise InputError(self.kappa_store, f"split coordinate has unknown value(s) {unknown}")
        self.labels = np.stack([np.asarray(self.ds[t].values, np.float64) for t in self.targets], axis=1)
        if not np.all(np.isfinite(self.labels)):
            raise InputError(self.kappa_store, f"target coordinate(s) {self.targets} hold non-finite values")
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
            raise InputError(where, f"segments sizes {seg_shape} differ from kappa sizes {kappa_shape}")
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
            return np.asarray(kappa.std(dim=("sample", "y", "x")).values)

    def provenance(self) -> dict[str, Any]:
        """What a trained model was trained on: stores, noise level, segmentation, geometry."""
        attrs = self.ds.attrs
        info: dict[str, Any] = {
            "kappa_store": str(self.kappa_store.resolve()),
            "segments_store": None if self.segments_store is None else str(self.segments_store.resolve()),
            "patch_size": [int(self.ds.sizes["y"]), int(self.ds.sizes["x"])],
            "bins": [int(b) for b in np.asarray(self.ds["bin"].values)] if "bin" in self.ds.coords else None,
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
        memory_budget_gib: float = 2.0,
        max_samples: int | None = None,
        seed: int = 0,
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
            GiB, else lazily by Zarr chunk.
        max_samples
            Keep at most this many samples of the split, drawn at random (fixed by ``seed``) and
            kept in store order; None keeps all.
        """
        scaler = self.scaler() if scaler is None else scaler
        idx = self.indices(split)
        if max_samples is not None and max_samples < idx.size:
            idx = np.sort(np.random.default_rng([seed, idx.size]).choice(idx, max_samples, replace=False))
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
    so no per-sample Python work is done while training. Use :func:`collate_batch` as the
    DataLoader's ``collate_fn``.

    Attributes
    ----------
    scaler
        The :class:`LabelScaler` of ``target``.
    provenance
        Store paths and attributes (see :meth:`PatchData.provenance`).
    read_groups
        Zarr chunk of each item when read lazily (for :class:`EpochBatchSampler`), else None.
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
                raise InputError(store, f"cannot read array '{name}' ({type(exc).__name__}: {exc})") from None
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
                batch["segments"] = torch.from_numpy(self._read_rows("segments", rows).astype(np.int64))
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


def collate_batch(data: dict[str, torch.Tensor] | list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """DataLoader ``collate_fn``: batches from :meth:`PatchDataset.__getitems__` pass through,
    lists of per-sample dicts (any other map-style dataset) are stacked."""
    if isinstance(data, dict):
        return data
    return torch.utils.data.default_collate(data)


class EpochBatchSampler(torch.utils.data.Sampler):
    """Batches of dataset positions, reshuffled deterministically for each epoch.

    The order of epoch ``e`` depends only on ``(seed, e)``, so a run resumed at an epoch boundary
    sees exactly the batches of an uninterrupted one. With ``groups`` (the Zarr chunk of each
    item of a lazily read dataset), the groups are shuffled and the items within each group, so
    consecutive batches read consecutive chunks.

    Parameters
    ----------
    n
        Number of items.
    batch_size
        Items per batch.
    shuffle
        Shuffle (training) or keep the dataset order (evaluation).
    seed
        Seed of the shuffles.
    drop_last
        Drop the last, incomplete batch (keeps batch statistics well defined while training).
    groups
        Optional group label per item, shape ``(n,)``.
    """

    def __init__(
        self,
        n: int,
        batch_size: int,
        *,
        shuffle: bool,
        seed: int = 0,
        drop_last: bool = False,
        groups: np.ndarray | None = None,
    ) -> None:
        self.n = int(n)
        self.batch_size = int(batch_size)
        self.shuffle = shuffle
        self.seed = int(seed)
        self.drop_last = drop_last and self.n >= self.batch_size
        self.groups = None if groups is None else np.asarray(groups)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        if self.drop_last:
            return self.n // self.batch_size
        return -(-self.n // self.batch_size)

    def order(self) -> np.ndarray:
        """The positions of this epoch, in batch order."""
        if not self.shuffle:
            return np.arange(self.n)
        rng = np.random.default_rng([self.seed, self.epoch])
        if self.groups is None:
            return rng.permutation(self.n)
        _, group = np.unique(self.groups, return_inverse=True)
        group_rank = rng.permutation(group.max() + 1)[group]
        # Sort by (shuffled group, random key): shuffled groups, shuffled within each group.
        return np.lexsort((rng.random(self.n), group_rank))

    def __iter__(self) -> Iterator[list[int]]:
        order = self.order()
        for b in range(len(self)):
            yield order[b * self.batch_size : (b + 1) * self.batch_size].tolist()


# --------------------------------------------------------------------------------------------
# Augmentation
# --------------------------------------------------------------------------------------------


def dihedral_transform(maps: torch.Tensor, element: int) -> torch.Tensor:
    """Apply symmetry ``element`` (0..7) of the square to the last two axes of ``maps``.

    ``element = 4 * flip + r``: a flip of the x axis if ``flip``, then a rotation by ``r * 90``
    degrees. Element 0 is the identity.
    """
    flip, turns = divmod(int(element), 4)
    if flip:
        maps = maps.flip(-1)
    return torch.rot90(maps, turns, dims=(-2, -1)) if turns else maps


def augment_batch(batch: dict[str, torch.Tensor], generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Apply a random symmetry of the square to each map of a batch, the same to its segments.

    Rotations by 90 degrees and flips leave the statistics of an isotropic field unchanged.
    Each symmetry is a permutation of the pixels, so the whole batch is moved by one gather per
    array, with the per-map permutation picked from a table of the 8 (no loop over maps, and
    deterministic on every device). Non-square maps only get the 4 symmetries that keep their
    shape.

    Parameters
    ----------
    batch
        Dict with ``kappa`` (B, C, H, W) and optionally ``segments`` (B, H, W), on any device.
    generator
        CPU generator the symmetries are drawn from (seed it per epoch for reproducible runs).

    Returns
    -------
    A new dict with contiguous ``kappa`` and ``segments``; other entries (``target``, ...) are
    passed through. ``out["symmetry"]`` (B,) holds the element applied to each map (see
    :func:`dihedral_transform`).
    """
    kappa = batch["kappa"]
    n, h, w = kappa.shape[0], kappa.shape[-2], kappa.shape[-1]
    # Identity, half turn, flip and flip + half turn are the symmetries that keep H x W maps H x W.
    allowed = list(range(N_DIHEDRAL)) if h == w else [0, 2, 4, 6]
    choice = torch.randint(0, len(allowed), (n,), generator=generator)
    pixels = torch.arange(h * w, device=kappa.device).reshape(h, w)
    # sources[j, p]: the input pixel that symmetry allowed[j] moves to output pixel p.
    sources = torch.stack([dihedral_transform(pixels, e).reshape(-1) for e in allowed])
    index = sources[choice.to(kappa.device)]  # (B, H * W)
    out = dict(batch)
    out["symmetry"] = torch.tensor(allowed)[choice].to(kappa.device)
    for key in ("kappa", "segments"):
        if key in batch:
            maps = batch[key]
            flat = maps.reshape(n, -1, h * w)
            out[key] = flat.gather(-1, index[:, None, :].expand_as(flat)).reshape(maps.shape)
    return out


def mask_random_groups(
    batch: dict[str, torch.Tensor],
    generator: torch.Generator,
    probability: float,
    grid: int,
    min_keep: float,
) -> dict[str, torch.Tensor]:
    """Zero random cells of some maps, so a backbone learns to predict from partial maps.

    A Sum-of-Parts model feeds its frozen backbone masked maps g ⊙ x that keep about 20% of the
    map, so the backbone's predictions on such inputs must mean something. Each map is masked
    with ``probability``: it is cut into a ``grid`` x ``grid`` lattice of cells (SOP's patch
    tokens) and a random fraction, uniform in [``min_keep``, 1], of the cells is kept; kappa is
    set to 0 (its mean) elsewhere.

    Parameters
    ----------
    batch
        Dict with ``kappa`` (B, C, H, W); other entries pass through.
    generator
        CPU generator the masks are drawn from (seeded per epoch by the trainer).
    """
    kappa = batch["kappa"]
    n, h, w = kappa.shape[0], kappa.shape[-2], kappa.shape[-1]
    masked = torch.rand(n, generator=generator) < probability
    keep = min_keep + (1 - min_keep) * torch.rand(n, generator=generator)
    # A cell is kept when its random rank falls below the kept fraction of the cells.
    scores = torch.rand(n, grid * grid, generator=generator)
    ranks = scores.argsort(dim=1).argsort(dim=1).float() / (grid * grid)
    cells = (ranks < keep[:, None]) | ~masked[:, None]  # (B, grid * grid)
    row = torch.arange(h) * grid // h
    col = torch.arange(w) * grid // w
    pixel_cell = (row[:, None] * grid + col[None, :]).reshape(-1)  # (H * W,)
    pixel_mask = cells[:, pixel_cell].reshape(n, 1, h, w).to(kappa.device, kappa.dtype)
    return {**batch, "kappa": kappa * pixel_mask}
