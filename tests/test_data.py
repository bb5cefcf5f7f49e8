"""Torch datasets from the Zarr patch and segmentation stores, label scaling, augmentation."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr
from fixtures.stores import draw_cosmologies, write_patch_store, write_segments_store

from cosmo_sop.errors import InputError
from cosmo_sop.models import LabelScaler
from cosmo_sop.training import (
    EpochBatchSampler,
    PatchData,
    augment_batch,
    collate_batch,
    dihedral_transform,
)

N_COSMOLOGIES, N_PATCHES, N_BINS, SIZE, CHUNK = 10, 3, 2, 12, 4
SPLIT_OF_COSMOLOGY = np.array(
    ["train", "val", "train", "test", "train", "train", "val", "train", "test", "train"]
)


def sample_coords(rng: np.random.Generator) -> dict:
    return draw_cosmologies(rng, N_COSMOLOGIES, N_PATCHES, splits=SPLIT_OF_COSMOLOGY).coords()


def quantile_labels(kappa: np.ndarray) -> np.ndarray:
    """Segments as a pixel-wise function of bin 1 (quartiles per map): moves with the map."""
    first = kappa[:, 0]
    edges = np.quantile(first, [0.25, 0.5, 0.75], axis=(1, 2))  # (3, n)
    return (first[None] > edges[:, :, None, None]).sum(axis=0).astype(np.int32)


def write_stores(tmp_path: Path, segments_coords: dict | None = None) -> tuple[Path, Path]:
    rng = np.random.default_rng(3)
    coords = sample_coords(rng)
    n = N_COSMOLOGIES * N_PATCHES
    kappa = rng.standard_normal((n, N_BINS, SIZE, SIZE)).astype(np.float32)
    patches = write_patch_store(
        tmp_path / "patches.zarr",
        kappa,
        coords,
        kappa_chunk=CHUNK,
        noise_level="stage3",
        noise={"name": "stage3", "shape_noise": True},
        sigma_pix=[0.01, 0.02],
        drop=("pixel_scale", "config", "cosmo_sop_version"),
    )
    segmentation = {"method": "watershed", "max_segments": 64}
    segments = write_segments_store(
        tmp_path / "segments.zarr",
        quantile_labels(kappa),
        segments_coords or coords,
        segmentation,
        chunk=CHUNK,
    )
    return patches, segments


@pytest.fixture(scope="module")
def stores(tmp_path_factory) -> tuple[Path, Path]:
    return write_stores(tmp_path_factory.mktemp("stores"))


def test_label_scaler_fits_train_split_only_and_round_trips(stores):
    data = PatchData(*stores)
    scaler = data.scaler()
    train = data.split_labels == "train"
    np.testing.assert_allclose(scaler.mean, data.labels[train].mean(axis=0))
    np.testing.assert_allclose(scaler.std, data.labels[train].std(axis=0))
    assert not np.allclose(scaler.mean, data.labels.mean(axis=0))  # val/test labels not used
    assert scaler.names == ("Om", "s8")

    z = scaler.transform(data.labels)
    np.testing.assert_allclose(z[train].mean(axis=0), 0, atol=1e-12)
    np.testing.assert_allclose(z[train].std(axis=0), 1)
    np.testing.assert_allclose(scaler.inverse_transform(z), data.labels)
    zt = scaler.transform(torch.tensor(data.labels, dtype=torch.float32))
    assert zt.dtype == torch.float32
    np.testing.assert_allclose(zt.numpy(), z, rtol=1e-5, atol=1e-6)
    restored = LabelScaler.from_state_dict(json.loads(json.dumps(scaler.state_dict())))
    np.testing.assert_array_equal(restored.mean, scaler.mean)
    np.testing.assert_array_equal(restored.std, scaler.std)

    # Every split's dataset is standardised with the same, train-split, scaler.
    val = data.dataset("val")
    assert val.scaler is not None
    np.testing.assert_allclose(
        val.targets.numpy(), z[data.indices("val")].astype(np.float32), rtol=1e-6
    )
    with pytest.raises(InputError, match="constant"):
        LabelScaler.fit(np.ones((5, 2)))


@pytest.mark.parametrize("budget_gib", [2.0, 0.0], ids=["in_memory", "lazy"])
def test_batches_hold_the_store_values(stores, budget_gib):
    data = PatchData(*stores)
    train = data.dataset("train", memory_budget_gib=budget_gib)
    assert train.in_memory == (budget_gib > 0)
    assert (train.read_groups is None) == train.in_memory
    kappa = xr.open_zarr(stores[0])["kappa"].values
    segments = xr.open_zarr(stores[1])["segments"].values
    idx = data.indices("train")
    assert len(train) == idx.size == 18
    positions = [5, 0, 17, 5, 9]  # unsorted, repeated, across chunks
    batch = collate_batch(train.__getitems__(positions))
    assert batch["kappa"].dtype == torch.float32 and batch["kappa"].shape == (5, N_BINS, SIZE, SIZE)
    assert batch["segments"].dtype == torch.int64 and batch["segments"].shape == (5, SIZE, SIZE)
    np.testing.assert_array_equal(batch["sample"].numpy(), idx[positions])
    np.testing.assert_array_equal(batch["kappa"].numpy(), kappa[idx[positions]])
    np.testing.assert_array_equal(batch["segments"].numpy(), segments[idx[positions]])
    np.testing.assert_allclose(
        batch["target"].numpy(), data.scaler().transform(data.labels[idx[positions]]), rtol=1e-6
    )
    # A whole shuffled epoch (chunks decoded, cached and evicted in the lazy case) is exact too.
    sampler = EpochBatchSampler(len(train), 5, shuffle=True, seed=0, groups=train.read_groups)
    for positions in sampler:
        batch = train.__getitems__(positions)
        np.testing.assert_array_equal(batch["kappa"].numpy(), kappa[idx[positions]])
        np.testing.assert_array_equal(batch["segments"].numpy(), segments[idx[positions]])
    item = train[17]
    np.testing.assert_array_equal(item["kappa"].numpy(), kappa[idx[17]])
    assert item["target"].shape == (2,)
    with pytest.raises(IndexError):
        train.__getitems__([18])


def test_dataloader_workers_give_the_same_batches(stores):
    train = PatchData(*stores).dataset("train", memory_budget_gib=0.0)

    def batches(workers: int) -> list[dict]:
        sampler = EpochBatchSampler(len(train), 4, shuffle=True, seed=1, groups=train.read_groups)
        loader = torch.utils.data.DataLoader(
            train, batch_sampler=sampler, collate_fn=collate_batch, num_workers=workers
        )
        return list(loader)

    for a, b in zip(batches(0), batches(1), strict=True):
        assert a.keys() == b.keys()
        for key in a:
            assert torch.equal(a[key], b[key])


def test_mismatched_segments_store_is_refused(tmp_path):
    coords = sample_coords(np.random.default_rng(3))
    swapped = coords["patch_index"][1].copy()
    swapped[[0, 1]] = swapped[[1, 0]]
    patches, segments = write_stores(tmp_path, {**coords, "patch_index": ("sample", swapped)})
    with pytest.raises(InputError, match="patch_index") as info:
        PatchData(patches, segments)
    assert str(patches) in str(info.value) and str(segments) in str(info.value)

    other = {key: ("sample", value[1][:-3]) for key, value in coords.items()}
    patches_b, _ = write_stores(tmp_path / "b")
    write_segments_store(tmp_path / "short.zarr", np.zeros((27, SIZE, SIZE), np.int32), other)
    with pytest.raises(InputError, match="sizes") as info:
        PatchData(patches_b, tmp_path / "short.zarr")
    assert str(patches_b) in str(info.value) and "short.zarr" in str(info.value)


def test_bad_stores_and_splits(stores, tmp_path):
    with pytest.raises(InputError, match="not found"):
        PatchData(tmp_path / "missing.zarr")
    data = PatchData(stores[0])
    with pytest.raises(InputError, match="unknown split"):
        data.indices("training")
    provenance = data.provenance()
    assert provenance["noise_level"] == "stage3" and provenance["noise"]["shape_noise"] is True
    assert provenance["bins"] == [1, 2] and provenance["patch_size"] == [SIZE, SIZE]
    assert provenance["n_samples"] == {"train": 18, "val": 6, "test": 6}
    assert PatchData(*stores).provenance()["segmentation"]["method"] == "watershed"
    kappa = xr.open_zarr(stores[0])["kappa"].values.astype(np.float64)
    np.testing.assert_allclose(
        data.bin_std(), kappa[data.indices("train")].std(axis=(0, 2, 3)), rtol=1e-12
    )
    batch = data.dataset("test").__getitems__([0, 1])
    assert "segments" not in batch


def numpy_dihedral(a: np.ndarray, element: int) -> np.ndarray:
    """Independent reference: flip the x axis if element >= 4, then rotate by 90 deg (element % 4) times."""
    if element >= 4:
        a = a[..., ::-1]
    return np.rot90(a, element % 4, axes=(-2, -1))


def test_dihedral_elements_are_the_eight_symmetries():
    square = torch.arange(16.0).reshape(1, 4, 4)
    images = [dihedral_transform(square, e) for e in range(8)]
    for e, image in enumerate(images):
        np.testing.assert_array_equal(image.numpy(), numpy_dihedral(square.numpy(), e))
    assert len({tuple(im.flatten().tolist()) for im in images}) == 8


def test_augmentation_moves_maps_and_segments_together(stores):
    data = PatchData(*stores)
    batch = collate_batch(data.dataset("train").__getitems__(list(range(18))))
    batch = {k: v.repeat(4, *([1] * (v.ndim - 1))) for k, v in batch.items()}  # 72 maps
    out = augment_batch(batch, torch.Generator().manual_seed(0))
    assert torch.equal(out["target"], batch["target"])
    kappa, segments = batch["kappa"].numpy(), batch["segments"].numpy()
    seen = set()
    for i in range(kappa.shape[0]):
        matches = [
            e
            for e in range(8)
            if np.array_equal(out["kappa"][i].numpy(), numpy_dihedral(kappa[i], e))
        ]
        assert matches == [int(out["symmetry"][i])], "not the reported symmetry of the square"
        # The same symmetry moved the segments, and they still label the same pixels of the map.
        np.testing.assert_array_equal(
            out["segments"][i].numpy(), numpy_dihedral(segments[i], matches[0])
        )
        seen.add(matches[0])
    np.testing.assert_array_equal(out["segments"].numpy(), quantile_labels(out["kappa"].numpy()))
    assert seen == set(range(8))
    # Seeded: the same generator seed gives the same augmentation, another seed another.
    again = augment_batch(batch, torch.Generator().manual_seed(0))
    other = augment_batch(batch, torch.Generator().manual_seed(1))
    assert torch.equal(again["kappa"], out["kappa"]) and not torch.equal(
        other["kappa"], out["kappa"]
    )


def test_augmentation_of_non_square_maps_keeps_their_shape():
    batch = {"kappa": torch.randn(32, 1, 4, 6), "segments": torch.randint(0, 3, (32, 4, 6))}
    out = augment_batch(batch, torch.Generator().manual_seed(0))
    assert out["kappa"].shape == (32, 1, 4, 6) and out["segments"].shape == (32, 4, 6)
    assert set(out["symmetry"].tolist()) == {0, 2, 4, 6}
    for i, element in enumerate(out["symmetry"].tolist()):
        np.testing.assert_array_equal(
            out["kappa"][i].numpy(), numpy_dihedral(batch["kappa"][i].numpy(), element)
        )
        np.testing.assert_array_equal(
            out["segments"][i].numpy(), numpy_dihedral(batch["segments"][i].numpy(), element)
        )


def test_epoch_batch_sampler():
    groups = np.arange(50) // 10  # five chunks of ten
    sampler = EpochBatchSampler(50, 10, shuffle=True, seed=4, groups=groups)
    epoch1 = list(sampler)
    assert list(sampler) == epoch1  # the order depends on (seed, epoch) only
    sampler.set_epoch(2)
    epoch2 = list(sampler)
    assert epoch2 != epoch1
    for batches in (epoch1, epoch2):
        assert sorted(i for b in batches for i in b) == list(range(50))
        assert all(len(set(groups[b])) == 1 for b in batches)  # one chunk per batch
    plain = EpochBatchSampler(50, 8, shuffle=True, seed=4, drop_last=True)
    assert len(plain) == len(list(plain)) == 6 and all(len(b) == 8 for b in plain)
    ordered = EpochBatchSampler(5, 2, shuffle=False)
    assert list(ordered) == [[0, 1], [2, 3], [4]]
