"""The trainer: learning, metrics, determinism, resuming after SIGKILL, saved weights.

The data are a real patch store in the Zarr contract: 96 one-bin 16 x 16 maps whose mean
follows Omega_m and whose spread follows sigma_8, so a tiny CNN can learn both.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr
from fixtures.models import FIT_CONFIG as CONFIG
from fixtures.models import predict_kappa as predict
from fixtures.models import tiny_cnn as build_model
from fixtures.records import read_csv_rows as read_csv
from fixtures.stores import draw_cosmologies, write_patch_store
from safetensors.torch import load_file
from torch import nn

from cosmo_sop.errors import InputError
from cosmo_sop.models import load_sidecar, load_weights
from cosmo_sop.storage import write_zarr
from cosmo_sop.training import PatchData, evaluate, fit


def write_store(path: Path, n_cosmologies: int = 24, n_patches: int = 4, size: int = 16) -> Path:
    rng = np.random.default_rng(11)
    # Split by cosmology: 16 train, 4 val, 4 test cosmologies (64 / 16 / 16 maps).
    cosmologies = draw_cosmologies(rng, n_cosmologies, n_patches, splits=(16, 4, 4))
    c = cosmologies.index
    om, s8 = cosmologies.om[c, None, None, None], cosmologies.s8[c, None, None, None]
    kappa = om * 2 + s8 * rng.standard_normal((c.size, 1, size, size))
    noise = {"name": "noiseless", "shape_noise": False}
    return write_patch_store(
        path,
        kappa,
        cosmologies.coords(),
        kappa_chunk=16,
        noise_level="noiseless",
        noise=noise,
        sigma_pix=[0.0],
    )


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    return write_store(tmp_path_factory.mktemp("data") / "patches.zarr")


@pytest.fixture(scope="module")
def data(store):
    patches = PatchData(store)
    return patches.dataset("train"), patches.dataset("val")


def without_seconds(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if k != "seconds"} for row in rows]


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_loss_goes_down_metrics_and_outputs(data, tmp_path, store):
    train, val = data
    model = build_model()
    config = {**CONFIG, "epochs": 10}
    result = fit(model, train, val, predict, config, tmp_path / "run")
    rows = read_csv(tmp_path / "run" / "metrics.csv")
    assert [int(r["epoch"]) for r in rows] == list(range(1, 11))
    assert list(rows[0]) == [
        "epoch",
        "train_loss",
        "val_loss",
        "val_mse_Om",
        "val_mse_s8",
        "lr",
        "seconds",
    ]
    train_loss = [float(r["train_loss"]) for r in rows]
    val_loss = [float(r["val_loss"]) for r in rows]
    assert train_loss[-1] < 0.5 * train_loss[0]
    assert min(val_loss) < 0.5 * val_loss[0]
    # The validation loss is the mean of the per-target MSEs.
    for r in rows:
        assert float(r["val_loss"]) == pytest.approx(
            (float(r["val_mse_Om"]) + float(r["val_mse_s8"])) / 2
        )
    # One-cycle schedule: warm up then anneal below the peak.
    lrs = [float(r["lr"]) for r in rows]
    assert max(lrs) <= config["lr"] + 1e-12 and lrs[-1] < max(lrs)
    assert result["best_val_loss"] == min(val_loss)
    assert result["best_epoch"] == int(np.argmin(val_loss)) + 1
    assert result["epochs_completed"] == 10 and not result["stopped_early"]

    # Saved weights are the best ones, i.e. the model's weights on return, and load back equal.
    weights = tmp_path / "run" / "model.safetensors"
    assert_same_weights(load_file(weights), {k: v.cpu() for k, v in model.state_dict().items()})
    assert_same_weights(load_weights(weights), model.state_dict())
    assert_same_weights(load_weights(tmp_path / "run" / "checkpoint.pt"), model.state_dict())
    torch.save(model.state_dict(), tmp_path / "plain.pt")
    assert_same_weights(load_weights(tmp_path / "plain.pt"), model.state_dict())
    sidecar = load_sidecar(weights)
    assert sidecar["label_scaler"] == train.scaler.state_dict()
    assert sidecar["model_config"] == {"channels": 1}
    assert sidecar["training_config"]["lr"] == config["lr"]
    assert sidecar["data"]["train"]["kappa_store"] == str(store.resolve())
    assert sidecar["data"]["train"]["noise_level"] == "noiseless"
    assert sidecar["data"]["train"]["patch_size"] == [16, 16]
    assert sidecar["metrics"]["best_epoch"] == result["best_epoch"]
    assert not list((tmp_path / "run").glob(".*tmp-*")), "temporary files left behind"

    # evaluate() on the validation split reproduces the best epoch's validation MSEs.
    report = evaluate(model, val, predict, device="cpu")
    best = rows[result["best_epoch"] - 1]
    for name in ("Om", "s8"):
        assert report["mse_standardised"][name] == pytest.approx(
            float(best[f"val_mse_{name}"]), rel=1e-5
        )
        i = report["names"].index(name)
        assert report["mse"][name] == pytest.approx(
            report["mse_standardised"][name] * train.scaler.std[i] ** 2
        )
    assert report["predictions"].shape == report["targets"].shape == (len(val), 2)
    physical = PatchData(store).labels[val.sample_indices]
    np.testing.assert_allclose(report["targets"], physical, rtol=1e-6)

    from cosmo_sop.figures.training import plot_training_curves

    png = plot_training_curves(tmp_path / "run" / "metrics.csv", tmp_path / "curves.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000


def test_the_mean_absolute_error_trains_and_validates_by_the_mse(data, tmp_path):
    """``loss: mae`` fits the mean absolute error and is validated by the MSE (early stopping
    compares the same number as for an MSE run): it learns, and its weights differ from those of
    an MSE run from the same start and batches."""
    train, val = data
    runs = {}
    for loss in ("mse", "mae"):
        model = build_model()
        fit(model, train, val, predict, {**CONFIG, "epochs": 10, "loss": loss}, tmp_path / loss)
        runs[loss] = (model, read_csv(tmp_path / loss / "metrics.csv"))
    mae_rows = runs["mae"][1]
    val_loss = [float(r["val_loss"]) for r in mae_rows]
    assert min(val_loss) < 0.5 * val_loss[0]
    for r in mae_rows:
        assert float(r["val_loss"]) == pytest.approx(
            (float(r["val_mse_Om"]) + float(r["val_mse_s8"])) / 2
        )
    weights = [dict(runs[loss][0].state_dict()) for loss in ("mse", "mae")]
    assert any(not torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


def test_same_seed_same_run_other_seed_other_run(data, tmp_path):
    train, val = data
    results, rows, weights = [], [], []
    for name, seed in (("a", 7), ("b", 7), ("c", 8)):
        results.append(
            fit(build_model(), train, val, predict, {**CONFIG, "seed": seed}, tmp_path / name)
        )
        rows.append(without_seconds(read_csv(tmp_path / name / "metrics.csv")))
        weights.append(load_weights(tmp_path / name / "model.safetensors"))
    assert rows[0] == rows[1]
    assert {k: v for k, v in results[0].items() if k != "config_hash"} == {
        k: v for k, v in results[1].items() if k != "config_hash"
    }
    assert_same_weights(weights[0], weights[1])
    assert rows[0] != rows[2]  # the seed drives shuffling, augmentation and dropout


RESUME_SCRIPT = """
import json, sys, time
from pathlib import Path
sys.path.insert(0, {tests!r})
from fixtures.models import FIT_CONFIG as CONFIG, predict_kappa as predict, tiny_cnn as build_model
from cosmo_sop.training import PatchData, fit

store, run_dir, pause = sys.argv[1], Path(sys.argv[2]), sys.argv[3] == "pause"
patches = PatchData(store)

def hold_mid_epoch(epoch, batch, loss):
    # Stop in the middle of epoch 2, after the checkpoint of epoch 1, until killed.
    if pause and epoch == 2 and batch == 1:
        (run_dir / "paused").write_text("")
        time.sleep(600)

result = fit(build_model(), patches.dataset("train"), patches.dataset("val"), predict, CONFIG,
             run_dir, on_batch_end=hold_mid_epoch)
(run_dir / "result.json").write_text(json.dumps(result))
"""


@pytest.mark.slow
def test_resume_after_sigkill_matches_uninterrupted_run(store, tmp_path):
    script = tmp_path / "train.py"
    script.write_text(textwrap.dedent(RESUME_SCRIPT.format(tests=str(Path(__file__).parent))))
    env = {**os.environ, "PYTHONHASHSEED": "0"}

    def run(run_dir: Path, mode: str) -> subprocess.Popen:
        return subprocess.Popen(
            [sys.executable, str(script), str(store), str(run_dir), mode],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )

    interrupted_dir = tmp_path / "interrupted"
    interrupted = run(interrupted_dir, "pause")
    # The uninterrupted reference, in this process while the other one starts.
    patches = PatchData(store)
    reference = fit(
        build_model(),
        patches.dataset("train"),
        patches.dataset("val"),
        predict,
        CONFIG,
        tmp_path / "reference",
    )
    deadline = time.monotonic() + 60
    while not (interrupted_dir / "paused").exists():
        assert interrupted.poll() is None, interrupted.stdout.read()
        assert time.monotonic() < deadline, "training never reached epoch 2"
        time.sleep(0.05)
    checkpoint = torch.load(interrupted_dir / "checkpoint.pt", weights_only=True)
    assert checkpoint["progress"]["epoch"] == 1
    os.kill(interrupted.pid, signal.SIGKILL)
    assert interrupted.wait(timeout=30) == -signal.SIGKILL
    assert len(read_csv(interrupted_dir / "metrics.csv")) == 1
    assert not (interrupted_dir / "model.safetensors").exists()

    resumed = run(interrupted_dir, "run")
    out, _ = resumed.communicate(timeout=120)
    assert resumed.returncode == 0, out

    rows = read_csv(interrupted_dir / "metrics.csv")
    # No repeated rows.
    assert [int(r["epoch"]) for r in rows] == list(range(1, CONFIG["epochs"] + 1))
    assert without_seconds(rows) == without_seconds(
        read_csv(tmp_path / "reference" / "metrics.csv")
    )
    result = json.loads((interrupted_dir / "result.json").read_text())
    assert result == json.loads(json.dumps(reference))
    assert_same_weights(
        load_weights(interrupted_dir / "model.safetensors"),
        load_weights(tmp_path / "reference" / "model.safetensors"),
    )


def test_checkpoint_of_other_config_is_refused(data, tmp_path):
    train, val = data
    fit(build_model(), train, val, predict, {**CONFIG, "epochs": 1}, tmp_path / "run")
    with pytest.raises(InputError, match="another configuration"):
        fit(
            build_model(),
            train,
            val,
            predict,
            {**CONFIG, "epochs": 1, "lr": 1e-2},
            tmp_path / "run",
        )
    # Operational options (threads, progress bars) do not make it another run.
    again = fit(
        build_model(), train, val, predict, {**CONFIG, "epochs": 1, "threads": 2}, tmp_path / "run"
    )
    assert again["epochs_completed"] == 1


def test_bad_options_are_input_errors(data, tmp_path):
    train, val = data
    with pytest.raises(InputError, match=r"training.*unknown option"):
        fit(build_model(), train, val, predict, {"learning_rate": 1e-3}, tmp_path / "run")
    with pytest.raises(InputError, match=r"training\.lr"):
        fit(build_model(), train, val, predict, {"lr": -1.0}, tmp_path / "run")
    with pytest.raises(InputError, match=r"training\.precision"):
        fit(build_model(), train, val, predict, {"precision": "fp8"}, tmp_path / "run")


def test_trains_only_given_parameters_and_stops_early(data, tmp_path):
    train, val = data
    model = build_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    # min_delta so large that nothing after epoch 1 counts as an improvement: stop at epoch 1 + patience.
    config = {**CONFIG, "epochs": 10, "patience": 2, "min_delta": 1e9}
    result = fit(
        model, train, val, predict, config, tmp_path / "run", params=model.head.parameters()
    )
    assert result["stopped_early"] and result["epochs_completed"] == 3 and result["best_epoch"] == 1
    after = model.state_dict()
    for key in before:
        changed = not torch.equal(before[key], after[key])
        assert changed == key.startswith("head."), key
    assert all(p.requires_grad for p in model.parameters())  # frozen only during the run
    assert load_sidecar(tmp_path / "run" / "model.safetensors")["trained_parameters"] == [
        "head.weight",
        "head.bias",
    ]
    # The saved weights are epoch 1's, the best, not the last epoch's.
    checkpoint = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    best = checkpoint["progress"]["best_state"]
    assert_same_weights(load_weights(tmp_path / "run" / "model.safetensors"), best)
    assert not all(torch.equal(checkpoint["model"][k], best[k]) for k in best)
    with pytest.raises(InputError, match="no trainable parameters"):
        fit(model, train, val, predict, config, tmp_path / "other", params=[])


def quartile_segments(kappa: torch.Tensor) -> torch.Tensor:
    """(B, H, W) labels 0..3: the quartile of each pixel of bin 1 within its map."""
    first = kappa[:, 0].flatten(1)
    edges = torch.quantile(first, torch.tensor([0.25, 0.5, 0.75], dtype=first.dtype), dim=1).T
    return (first[:, :, None] > edges[:, None, :]).sum(-1).reshape(kappa[:, 0].shape)


class SegmentPooling(nn.Module):
    """A frozen feature map pooled per segment, then a trainable head: a miniature of SOP."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Conv2d(1, 4, 3, padding=1)
        self.head = nn.Linear(4 * 4, 2)

    def forward(self, x: torch.Tensor, segments: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.features(x)).flatten(2)  # (B, F, HW)
        onehot = nn.functional.one_hot(segments.flatten(1), 4).to(h.dtype)  # (B, HW, 4)
        pooled = h @ onehot / onehot.sum(1, keepdim=True).clamp(min=1)  # (B, F, 4)
        return self.head(pooled.flatten(1))


def test_segments_reach_predict_aligned_with_lazily_read_maps(store, tmp_path):
    with xr.open_zarr(store) as ds:
        seg = ds[["cosmology", "perm", "patch_index"]].assign(
            segments=(
                ("sample", "y", "x"),
                quartile_segments(torch.from_numpy(ds["kappa"].values)).int().numpy(),
            )
        )
        seg = seg.drop_vars(
            [v for v in seg.coords if v not in ("cosmology", "perm", "patch_index")]
        )
    segments_store = write_zarr(seg, tmp_path / "segments.zarr")
    patches = PatchData(store, segments_store)
    train = patches.dataset("train", memory_budget_gib=0.0)
    val = patches.dataset("val", memory_budget_gib=0.0)
    assert not train.in_memory
    seen = []

    def predict_checking_alignment(model, batch):
        # The trainer's augmentation must have moved the segments with the maps.
        assert torch.equal(batch["segments"], quartile_segments(batch["kappa"]))
        seen.append(batch["symmetry"].clone() if "symmetry" in batch else None)
        return model(batch["kappa"], batch["segments"])

    model = SegmentPooling()
    frozen = model.features.weight.clone()
    result = fit(
        model,
        train,
        val,
        predict_checking_alignment,
        {**CONFIG, "epochs": 2},
        tmp_path / "run",
        params=model.head.parameters(),
    )
    assert torch.equal(model.features.weight, frozen)
    assert np.isfinite(result["best_val_loss"])
    training_symmetries = torch.cat([s for s in seen if s is not None])
    assert set(training_symmetries.tolist()) == set(range(8))
    provenance = load_sidecar(tmp_path / "run" / "model.safetensors")["data"]["train"]
    assert provenance["segments_store"] == str(segments_store.resolve())


def test_a_warm_up_of_one_step_starts_at_the_peak():
    # warmup_fraction 0.1 of 2 epochs x 5 batches is one step: torch's OneCycleLR divided by
    # its zero length (ZeroDivisionError) before the first batch, e.g. for 80 maps in batches of 16.
    from cosmo_sop.training.optimisation import Optimisation

    weight = nn.Parameter(torch.ones(2, 2))
    cfg = {
        "lr": 1e-3,
        "weight_decay": 0.0,
        "schedule": "onecycle",
        "warmup_fraction": 0.1,
        "epochs": 2,
        "grad_clip_norm": None,
    }
    optimisation = Optimisation([weight], cfg, 5, torch.device("cpu"), None)
    lrs = []
    for _ in range(10):
        lrs.append(optimisation.optimizer.param_groups[0]["lr"])
        optimisation.step((weight**2).sum())
    assert lrs[0] == pytest.approx(1e-3) and lrs[-1] < 1e-5
    assert all(a > b for a, b in zip(lrs, lrs[1:], strict=False))  # cosine decay from the peak


def test_inverse_sqrt_schedule_warms_up_then_decays_as_one_over_root_step():
    from cosmo_sop.training.optimisation import Optimisation

    weight = nn.Parameter(torch.ones(2, 2))
    cfg = {
        "lr": 1e-3,
        "weight_decay": 0.0,
        "schedule": "inverse_sqrt",
        "warmup_fraction": 0.1,
        "epochs": 4,
        "grad_clip_norm": None,
    }
    optimisation = Optimisation([weight], cfg, 25, torch.device("cpu"), None)  # 10 warm-up steps
    lrs = []
    for _ in range(100):
        lrs.append(optimisation.lr)
        optimisation.step((weight**2).sum())
    assert lrs[0] == pytest.approx(1e-4) and lrs[9] == pytest.approx(1e-3)
    assert all(a < b for a, b in zip(lrs[:9], lrs[1:10], strict=True))
    assert lrs[39] == pytest.approx(1e-3 * (10 / 40) ** 0.5)  # step 40: half the peak
    assert lrs[-1] == pytest.approx(1e-3 * (10 / 100) ** 0.5)  # far from 0, unlike one-cycle
    # The schedule resumes from its state.
    resumed = Optimisation([weight], cfg, 25, torch.device("cpu"), None)
    resumed.load_state_dict(optimisation.state_dict())
    assert resumed.lr == pytest.approx(optimisation.lr)


@pytest.mark.parametrize(("low", "high"), [(0.2, 0.2), (0.5, 0.75)])
def test_random_masks_keep_a_fraction_of_cells_between_the_bounds(low, high):
    from cosmo_sop.training.augment import mask_random_groups

    kappa = torch.ones(200, 1, 28, 28)
    batch = mask_random_groups(
        {"kappa": kappa}, torch.Generator().manual_seed(0), 1.0, 14, low, high
    )
    kept = (batch["kappa"] != 0).float().mean(dim=(1, 2, 3))  # 2 x 2 pixels per cell
    assert torch.all(kept >= low - 1 / 196) and torch.all(kept <= high + 1 / 196)
    if low == high:
        assert torch.all(kept == 40 / 196)  # ceil(0.2 x 196) cells, as SOP's groups
