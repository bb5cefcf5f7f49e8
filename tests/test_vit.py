"""The ViT backbone, SOP around it, context pixels, and the classification loss of the trainer."""

from __future__ import annotations

import pytest
import torch
import yaml

from cosmo_sop.errors import InputError
from cosmo_sop.models import SumOfParts
from cosmo_sop.models.architectures import backbone_from_config, build_backbone
from cosmo_sop.models.backbone import ConvRegressor
from cosmo_sop.models.tokens import CONTEXT
from cosmo_sop.models.vit import VisionTransformer
from cosmo_sop.training.evaluation import evaluate
from cosmo_sop.training.loop import fit


def _vit(**kw) -> VisionTransformer:
    torch.manual_seed(0)
    settings = {"patch_size": 6, "hidden_size": 16, "layers": 2, "heads": 2, "mlp_size": 32}
    return VisionTransformer(4, 2, 66, **{**settings, **kw})


def test_vit_shapes_config_round_trip_and_token_encoder():
    vit = _vit().eval()
    x = torch.randn(3, 4, 66, 66)
    assert vit(x).shape == (3, 2)
    assert torch.equal(vit.head(vit.embed(x)), vit(x))
    assert vit.token_encoder(1)(x).shape == (3, 16, 11, 11)
    assert vit.token_encoder(3)(x).shape == (3, 16, 11, 11)
    with pytest.raises(ValueError, match="encoder_blocks"):
        vit.token_encoder(4)
    rebuilt = backbone_from_config(vit.config)
    rebuilt.load_state_dict(vit.state_dict())
    assert isinstance(rebuilt, VisionTransformer)
    assert torch.equal(rebuilt.eval()(x), vit(x))
    assert isinstance(backbone_from_config(ConvRegressor(4).config), ConvRegressor)
    assert isinstance(build_backbone("vit", 4, 2, 66, {"patch_size": 11}), VisionTransformer)


def test_vit_refuses_bad_geometry_and_config():
    with pytest.raises(ValueError, match="multiple of patch_size"):
        VisionTransformer(4, 2, 66, patch_size=5)
    with pytest.raises(ValueError, match="multiple of heads"):
        VisionTransformer(4, 2, 66, hidden_size=10, heads=4)
    with pytest.raises(InputError, match="unknown ViT option"):
        VisionTransformer.from_config({**_vit().config, "depth": 3}, "model.json")
    with pytest.raises(InputError, match="unknown architecture"):
        backbone_from_config({"architecture": "resnet"}, "model.json")


@pytest.mark.parametrize("task", ["regression", "classification"])
def test_sop_around_vit_is_exactly_the_sum_of_its_parts(task):
    torch.manual_seed(1)
    vit = VisionTransformer(4, 2 if task == "regression" else 5, 66, hidden_size=16, layers=2)
    sop = SumOfParts.from_backbone(vit, (4, 66, 66), 1, patch_tokens=vit.grid, task=task).eval()
    x = torch.randn(2, 4, 66, 66)
    with torch.no_grad():
        parts = sop.explain(x)
        again = vit(x[:1] * parts.masks[:1, :1].float())
    assert torch.allclose((parts.scores * parts.partial).sum(1), parts.prediction, atol=1e-5)
    # Each group is a set of whole ViT patches, and the partial prediction is the ViT on it.
    assert torch.allclose(parts.partial[0, 0], again[0], atol=1e-5)
    patch_means = parts.masks.float().unflatten(2, (11, 6)).unflatten(4, (11, 6)).mean((3, 5))
    assert set(patch_means.unique().tolist()) <= {0.0, 1.0}


def test_context_pixels_are_in_every_groups_input_and_in_no_group():
    torch.manual_seed(2)
    cnn = ConvRegressor(1, 3, input_size=24, widths=[4, 4], hidden=[8])
    sop = SumOfParts.from_backbone(
        cnn, (1, 24, 24), 1, tokens="segments", task="classification", n_groups=4
    ).eval()
    segments = (torch.arange(24) // 6).repeat(24, 1).expand(2, 24, 24).clone()
    segments[:, :4] = CONTEXT  # the top rows: context
    x = torch.randn(2, 1, 24, 24)
    with torch.no_grad():
        parts = sop.explain(x, segments)
        context = (segments == CONTEXT)[:, None]
        shown = (parts.masks | context).float()
        expected = cnn(x[0:1] * shown[0, :1])
    assert not parts.masks[context.expand_as(parts.masks)].any()
    assert torch.allclose(parts.partial[0, 0], expected[0], atol=1e-5)
    assert torch.allclose((parts.scores * parts.partial).sum(1), parts.prediction, atol=1e-5)
    with pytest.raises(ValueError, match="-1 for context"):
        sop.explain(x, segments - 1)


class _Blobs(torch.utils.data.Dataset):
    """Two classes of images: bright or dark top half."""

    def __init__(self, n: int, seed: int) -> None:
        g = torch.Generator().manual_seed(seed)
        self.labels = torch.randint(0, 2, (n,), generator=g)
        self.images = torch.rand(n, 1, 12, 12, generator=g) * 0.2
        self.images[:, :, :6] += self.labels[:, None, None, None] * 0.8

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"images": self.images[i], "target": self.labels[i]}


def test_fit_with_cross_entropy_learns_a_classifier(tmp_path):
    torch.manual_seed(3)
    model = ConvRegressor(1, 2, input_size=12, widths=[4], kernel_size=3, hidden=[8])
    config = {
        "seed": 0,
        "loss": "cross_entropy",
        "epochs": 6,
        "batch_size": 16,
        "lr": 1e-2,
        "augment": True,
        "mask_probability": 0.5,
        "mask_grid": 2,
        "progress": False,
    }
    predict = lambda m, b: m(b["images"])  # noqa: E731
    fit(model, _Blobs(128, 0), _Blobs(64, 1), predict, config, tmp_path / "run")
    metrics = (tmp_path / "run" / "metrics.csv").read_text()
    assert "val_accuracy" in metrics.splitlines()[0]
    result = evaluate(model, _Blobs(64, 2), predict, device="cpu", loss="cross_entropy")
    assert result["predictions"].shape == (64, 2)
    assert result["accuracy"] > 0.9


def test_vit_maps_overrides_merge_and_are_checked_before_any_job():
    from cosmo_sop import layout
    from cosmo_sop.config import SCHEMA_PATH, task_config, validate_config

    config = validate_config({"vit_maps": {"sop": {"training": {"epochs": 5}}}}, whole=True)
    merged = task_config(config, "vit_maps", "training", "sop")
    assert merged["sop"]["training"]["epochs"] == 5
    assert merged["sop"]["training"]["batch_size"] == config["sop"]["training"]["batch_size"]
    assert merged["training"]["epochs"] == config["vit_maps"]["training"]["epochs"]
    assert merged["training"]["mask_grid"] == config["training"]["mask_grid"]
    assert merged["seed"] == config["seed"]
    for bad, message in [
        ({"vit_maps": {"training": {"epochz": 3}}}, "'vit_maps.training'"),
        ({"vit_maps": {"levels": ["deep"]}}, "unknown noise level"),
        ({"tasks": ["vit_maps"], "vit": {"patch_size": 5}}, "does not divide 'ingest.patch_size'"),
        ({"tasks": ["gpt"]}, "config key 'tasks"),
    ]:
        with pytest.raises(InputError, match=message):
            validate_config(bad, "my.yaml", whole=True)
    validate_config({"vit": {"patch_size": 5}}, whole=True)  # the ViT is not run: no matter
    # A noise level may not take a task's folder.
    with pytest.raises(InputError, match="vit_maps"):
        validate_config({"noise": [{"name": "vit_maps", "shape_noise": False}]}, whole=True)
    assert validate_config({}, whole=True)["tasks"] == []  # none in the demo
    # The schema's task names are the results folders of layout.
    enum = yaml.safe_load(SCHEMA_PATH.read_text())["properties"]["tasks"]["items"]["enum"]
    assert tuple(enum) == layout.TASKS


def test_the_report_says_which_models_score_the_faithfulness(tmp_path):
    """With evaluation.own_model false (the ViT's default) no SOP-on-SOP rows exist, and the
    report's text says that every method is scored on the backbone."""
    from cosmo_sop import layout
    from cosmo_sop.report.sections import faithfulness
    from cosmo_sop.report.tables import FAITHFULNESS_COLUMNS

    science = layout.science_dir(tmp_path, "noiseless")
    science.mkdir(parents=True)
    row = {"method": "sop", "resolution": "token", "scorer": "backbone", "output": "Om"}
    row |= {"metric": "Ins", "better": "lower", "mean": 0.3, "ci_low": 0.2, "ci_high": 0.4}
    row |= {"sop_minus": "nan", "diff_ci_low": "nan", "diff_ci_high": "nan"}
    row |= {"diff_p_adjusted": "nan", "significant": "false"}
    lines = [",".join(FAITHFULNESS_COLUMNS), ",".join(str(row[c]) for c in FAITHFULNESS_COLUMNS)]
    path = science / layout.FAITHFULNESS_CSV
    path.write_text("\n".join(lines) + "\n")
    assert faithfulness(tmp_path, "noiseless")["own_model"] is False
    path.write_text("\n".join([*lines, lines[1].replace("backbone", "sop", 1)]) + "\n")
    assert faithfulness(tmp_path, "noiseless")["own_model"] is True
