"""Tests of the floor under SOP (random groups), of SOP's error ratio to its backbone, and of
the benchmarks' choices between variants (on validation only)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch
from test_sop import block_segments, make_inputs, make_sop

from cosmo_sop.errors import InputError
from cosmo_sop.models.tokens import n_kept_tokens
from cosmo_sop.training import mse_ratio_to_backbone, random_token_sets
from cosmo_sop.training.comparison import choose_on_validation
from cosmo_sop.training.floor import present_tokens, random_group_floor


def test_random_groups_hold_the_ceiling_of_tau_of_each_maps_valid_tokens():
    valid = torch.zeros(3, 30, dtype=torch.bool)
    valid[0, :30], valid[1, :7], valid[2, 5:20] = True, True, True
    groups = random_token_sets(valid, 6, 0.2, torch.Generator().manual_seed(0))
    assert groups.shape == (3, 6, 30)
    assert torch.all(groups.sum(-1) == n_kept_tokens(valid.sum(1), 0.2)[:, None])
    assert not (groups & ~valid[:, None, :]).any()
    again = random_token_sets(valid, 6, 0.2, torch.Generator().manual_seed(0))
    assert torch.equal(groups, again)
    assert len({tuple(g.nonzero().flatten().tolist()) for g in groups[0]}) > 1  # not all alike


def test_present_tokens_are_the_labels_of_each_map():
    labels = block_segments([7, 15, 5])
    present = present_tokens(labels, 15)
    assert present.sum(1).tolist() == [7, 15, 5]


class _Data(torch.utils.data.Dataset):
    """Maps, segments and targets with a scaler's names, as a PatchDataset hands them out."""

    class scaler:
        names = ("Om", "s8")

    def __init__(self, n: int) -> None:
        self.kappa = make_inputs(n, seed=3)
        self.segments = block_segments([7, 15, 5, 9][:n] * (n // 4 + 1))[:n]
        self.target = torch.randn(n, 2, generator=torch.Generator().manual_seed(4))

    def __len__(self) -> int:
        return len(self.kappa)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"kappa": self.kappa[i], "segments": self.segments[i], "target": self.target[i]}


@pytest.mark.parametrize("tokens", ["patches", "segments"])
def test_floor_is_the_backbone_on_the_drawn_groups(tokens):
    model = make_sop(tokens, n_groups=5).eval()
    data = _Data(8)
    floor = random_group_floor(model, data, batch_size=8, seed=11)
    # The same draws by hand: the backbone on x times each random group's pixels.
    segments = data.segments if tokens == "segments" else None
    token_map = model.token_map(data.kappa, segments)
    groups = random_token_sets(
        present_tokens(token_map, int(token_map.max()) + 1),
        5,
        model.config["keep_fraction"],
        torch.Generator().manual_seed(11),
    )
    with torch.no_grad():
        partial = torch.stack(
            [
                model.backbone(
                    data.kappa
                    * groups[:, i].gather(1, token_map.flatten(1)).view(8, 1, *token_map.shape[1:])
                )
                for i in range(5)
            ],
            1,
        )
    single = ((partial[:, 0] - data.target) ** 2).mean(0)
    average = ((partial.mean(1) - data.target) ** 2).mean(0)
    assert floor["single_group"]["Om"] == pytest.approx(float(single[0]), rel=1e-5)
    assert floor["uniform_average"]["s8"] == pytest.approx(float(average[1]), rel=1e-5)
    assert floor["n_maps"] == 8 and floor["keep_fraction"] == model.config["keep_fraction"]


def _predictions(error_scale: float, rng: np.random.Generator, n: int = 60) -> dict:
    targets = rng.uniform(0.2, 0.9, (n, 2))
    return {
        "sample": np.arange(n),
        "targets": targets,
        "predictions": targets + error_scale,
        "names": np.array(["Om", "s8"]),
    }


def test_ratio_to_backbone_and_its_cosmology_interval():
    rng = np.random.default_rng(0)
    backbone = _predictions(0.1, rng)
    sop = {**backbone, "predictions": backbone["targets"] + 0.1 * np.sqrt(2.0)}
    cosmologies = np.repeat(np.arange(12), 5)
    result = mse_ratio_to_backbone(sop, backbone, cosmologies, 200, 0, "b.npz")
    assert result["Om"]["ratio"] == pytest.approx(2.0)
    assert result["s8"]["ci_low"] == pytest.approx(2.0) and result["s8"][
        "ci_high"
    ] == pytest.approx(2.0)
    assert result["n_cosmologies"] == 12 and result["n_maps"] == 60
    # Errors that differ between cosmologies give an interval around the ratio.
    noisy = {**sop, "predictions": sop["predictions"] + rng.normal(0, 0.1, (60, 2))}
    spread = mse_ratio_to_backbone(noisy, backbone, cosmologies, 200, 0, "b.npz")["Om"]
    assert spread["ci_low"] < spread["ratio"] < spread["ci_high"]
    with pytest.raises(InputError, match="b.npz: holds the predictions of other test maps"):
        mse_ratio_to_backbone(
            sop, {**backbone, "sample": backbone["sample"] + 1}, cosmologies, 10, 0, "b.npz"
        )


def benchmark(name: str) -> ModuleType:
    """A script of benchmarks/ (not a package) imported from its file."""
    path = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"benchmark_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_choose_on_validation_takes_the_lowest_and_refuses_nan():
    assert choose_on_validation({"a": 0.4, "b": 0.3, "c": 0.3}) == "b"  # first among equals
    with pytest.raises(ValueError, match="finite"):
        choose_on_validation({"a": 0.4, "b": float("nan")})
    with pytest.raises(ValueError, match="no variants"):
        choose_on_validation({})


def test_sop_choices_follows_validation_where_test_disagrees():
    choices = benchmark("sop_choices")
    # The demo's selector rows: validation prefers the paper's start (0.358 against 0.376),
    # the test split the uniform one (0.522 against 0.537).
    rows = {
        "paper": {"val": {"Om": 0.220, "s8": 0.138}, "test": {"Om": 0.284, "s8": 0.253}},
        "uniform": {"val": {"Om": 0.215, "s8": 0.161}, "test": {"Om": 0.222, "s8": 0.300}},
    }
    line = choices.choice(rows)
    assert line.startswith("chosen on validation only: paper (val Om + s8 0.358")
    assert "next: uniform 0.376" in line and "test columns took no part" in line
    # Swapping the test numbers changes nothing; better validation numbers change the choice.
    swapped = {
        "paper": {**rows["paper"], "test": rows["uniform"]["test"]},
        "uniform": {**rows["uniform"], "test": rows["paper"]["test"]},
    }
    assert choices.choice(swapped) == line
    rows["uniform"]["val"] = {"Om": 0.1, "s8": 0.1}
    assert choices.choice(rows).startswith("chosen on validation only: uniform")


def test_sop_floor_follows_validation_where_test_disagrees():
    floor = benchmark("sop_floor")

    def scores(val: float, test: float) -> dict:
        cells = lambda v: {c: {"Om": v, "s8": v} for c in floor.COLUMNS}  # noqa: E731
        return {"val": cells(val), "test": cells(test)}

    results = {"broad": scores(0.3, 0.5), "exact 0.2": scores(0.4, 0.1)}
    assert floor.choice(results).startswith("chosen on validation only: broad (")
    assert f"{6 * 0.3:.3f}" in floor.choice(results)  # 3 columns x 2 outputs, validation only
    results["exact 0.2"] = scores(0.2, 0.9)
    assert floor.choice(results).startswith("chosen on validation only: exact 0.2 (")
