"""The faithfulness step: SOP against post-hoc attributions of the backbone, one table."""

from __future__ import annotations

import json

import numpy as np
import pytest
import xarray as xr
from fixtures.records import read_csv_rows
from fixtures.runs import tiny_config, write_stores

from cosmo_sop.config import defaults
from cosmo_sop.errors import InputError
from cosmo_sop.faithfulness.options import settings_of
from cosmo_sop.faithfulness.run import DEFAULT_METHODS, faithfulness_evaluation
from cosmo_sop.training.runs import train_backbone

ROWS = ["MSE top-20%", "Ins", "InsG", "Del", "DelG", "purity", "sparsity"]
#: Fewer perturbations than the defaults keep the perturbation methods fast on tiny maps.
FAST = {
    "kernel_shap": {"n_samples": 24},
    "lime": {"n_samples": 24},
    "gradient_shap": {"n_samples": 8},
    "integrated_gradients": {"n_steps": 8},
}


def test_faithfulness_table_of_all_methods(science_runs, tmp_path):
    tmp, patches, segments, explanations = science_runs
    run = lambda out, figures: faithfulness_evaluation(  # noqa: E731
        explanations,
        patches,
        tmp / "backbone",
        tmp / "xdnn",
        out,
        segments,
        n_maps=4,
        method_options=FAST,
        seed=3,
        n_boot=50,
        figures=figures,
    )
    table = run(tmp_path / "a", True)
    entries = list(table.entry.values)
    # SOP on the backbone and on itself; every baseline per pixel and per token; X-Gradient
    # also on the X-DNN it explains.
    assert entries[:2] == ["sop/token/backbone", "sop/token/sop"]
    for method in DEFAULT_METHODS[1:]:
        assert f"{method}/pixel/backbone" in entries and f"{method}/token/backbone" in entries
    assert {"x_gradient/pixel/xdnn", "x_gradient/token/xdnn"} <= set(entries)
    assert len(entries) == 2 + 2 * (len(DEFAULT_METHODS) - 1) + 2
    assert list(table.metric.values) == ROWS
    assert table.score.dims == ("sample", "entry", "metric", "output")
    assert table.sizes["sample"] == 4 and table.attrs["n_maps"] == 4
    assert table.cosmology.dims == ("sample",)
    # Every model-scored metric is finite on the backbone; SOP on itself has no grouped curves.
    backbone = table.sel(entry=[e for e in entries if e.endswith("/backbone")])
    assert np.isfinite(backbone["mean"].sel(metric=["MSE top-20%", "Ins", "Del"])).all()
    assert np.isfinite(table["mean"].sel(entry="sop/token/sop", metric="Ins")).all()
    assert np.isnan(table["mean"].sel(entry="sop/token/sop", metric="InsG")).all()
    # Token entries copy the grouped curves of their pixel entry (same group order).
    np.testing.assert_array_equal(
        table.score.sel(entry="saliency/token/backbone", metric="InsG"),
        table.score.sel(entry="saliency/pixel/backbone", metric="InsG"),
    )
    # The mean is the mean of the per-map scores; the interval holds it.
    np.testing.assert_allclose(table["mean"], table.score.mean("sample"), equal_nan=True)
    finite = np.isfinite(table["ci_low"])
    assert (table["ci_low"].values[finite] <= table["mean"].values[finite] + 1e-12).all()
    # Paired differences: SOP (same scoring model) minus the entry, map by map.
    diff = table.score.sel(entry="sop/token/backbone") - table.score.sel(
        entry="saliency/pixel/backbone"
    )
    np.testing.assert_allclose(
        table.sop_minus.sel(entry="saliency/pixel/backbone"), diff.mean("sample"), equal_nan=True
    )
    own = table.score.sel(entry="sop/token/sop") - table.score.sel(entry="x_gradient/pixel/xdnn")
    np.testing.assert_allclose(
        table.sop_minus.sel(entry="x_gradient/pixel/xdnn"), own.mean("sample"), equal_nan=True
    )
    assert np.isnan(table.sop_minus.sel(entry="sop/token/backbone")).all()
    purity = table["mean"].sel(metric="purity").values
    assert ((purity[np.isfinite(purity)] >= 0) & (purity[np.isfinite(purity)] <= 1)).all()
    sparsity = table.score.sel(metric="sparsity").values
    assert ((sparsity > 0) & (sparsity <= 1)).all()

    for name in ("faithfulness.csv", "purity.csv", "faithfulness_curves.png", "faithfulness.zarr"):
        assert (tmp_path / "a" / name).exists(), name
    rows = read_csv_rows(tmp_path / "a" / "faithfulness.csv")
    assert len(rows) == len(entries) * 2 * len(ROWS)
    assert {"mean", "ci_low", "ci_high", "n_maps", "n_cosmologies", "sop_minus"} <= set(rows[0])
    assert len(read_csv_rows(tmp_path / "a" / "purity.csv")) == 2 * len(DEFAULT_METHODS)
    stored = xr.open_zarr(tmp_path / "a" / "faithfulness.zarr").load()
    xr.testing.assert_identical(stored.drop_attrs(), table.drop_attrs())

    # Deterministic: a second run gives the same table, to the bit.
    again = run(tmp_path / "b", False)
    xr.testing.assert_identical(again.drop_attrs(), table.drop_attrs())
    first, second = ((tmp_path / run / "faithfulness.csv").read_bytes() for run in ("a", "b"))
    assert first == second


def test_faithfulness_without_segments_skips_segment_methods(science_runs, tmp_path):
    tmp, patches, _, explanations = science_runs
    with pytest.warns(UserWarning, match="kernel_shap"):
        table = faithfulness_evaluation(
            explanations,
            patches,
            tmp / "backbone",
            None,
            tmp_path,
            None,
            methods=("sop", "kernel_shap", "lime", "saliency"),
            n_maps=3,
            n_boot=10,
            figures=False,
            method_options={"lime": {"n_samples": 16}, "gradient_shap": {}},
        )
    # SOP groups segments: without them no per-token entries and no SOP on itself.
    assert list(table.entry.values) == ["sop/token/backbone", "saliency/pixel/backbone"]
    assert set(json.loads(table.attrs["method_options"])) == {"saliency"}
    assert set(json.loads(table.attrs["skipped"])) == {
        "kernel_shap",
        "lime",
        "per token, SOP on SOP",
    }
    assert (tmp_path / "faithfulness.csv").is_file()
    assert not (tmp_path / "faithfulness_curves.png").exists()  # figures=False
    assert np.isfinite(table["mean"].sel(metric=["Ins", "Del"]).values).all()


def test_faithfulness_purity_classifies_on_the_structures_smoothing(science_runs, tmp_path):
    """Purity cells are classified on the sigma map smoothed as the structures step smooths it
    (default: segmentation's smoothing), recorded in the store's attributes."""
    tmp, patches, segments, explanations = science_runs
    common = dict(methods=("sop", "saliency"), n_maps=4, n_boot=10, figures=False, seed=2)
    tables = {
        smoothing: faithfulness_evaluation(
            explanations,
            patches,
            tmp / "backbone",
            None,
            tmp_path / str(smoothing),
            segments,
            smoothing_pixels=smoothing,
            **common,
        )
        for smoothing in (0.0, 3.0)
    }
    assert tables[3.0].attrs["smoothing_pixels"] == 3.0
    # not given: as the schema's defaults resolve it, segmentation.smoothing_pixels
    default = settings_of(None, None, None, None, None, None, None, None, segments)
    assert default.smoothing_pixels == defaults("segmentation.smoothing_pixels") == 1.0
    purity = {k: t.score.sel(metric="purity").values for k, t in tables.items()}
    assert not np.array_equal(purity[0.0], purity[3.0], equal_nan=True)
    # the other metrics do not depend on it
    others = [m for m in ROWS if m != "purity"]
    xr.testing.assert_identical(
        tables[0.0].score.sel(metric=others), tables[3.0].score.sel(metric=others)
    )
    with pytest.raises(InputError, match="smoothing_pixels"):
        faithfulness_evaluation(
            explanations,
            patches,
            tmp / "backbone",
            None,
            tmp_path / "bad",
            segments,
            smoothing_pixels=-1.0,
            **common,
        )


def test_faithfulness_refuses_mismatched_models_and_options(science_runs, tmp_path):
    tmp, patches, segments, explanations = science_runs
    common = dict(out_dir=tmp_path / "out", segments_store=segments, n_maps=2, n_boot=10)
    with pytest.raises(InputError, match="expected backbone"):  # the X-DNN is no backbone
        faithfulness_evaluation(explanations, patches, tmp / "xdnn", tmp / "xdnn", **common)
    with pytest.raises(InputError, match="unknown"):
        faithfulness_evaluation(
            explanations,
            patches,
            tmp / "backbone",
            tmp / "xdnn",
            methods=("sop", "gradcam"),
            **common,
        )
    with pytest.raises(InputError, match="n_sample"):
        faithfulness_evaluation(
            explanations,
            patches,
            tmp / "backbone",
            tmp / "xdnn",
            method_options={"lime": {"n_sample": 3}},
            **common,
        )
    # A backbone trained on other data (another noise level) is refused.
    noisy, _ = write_stores(tmp_path, noise_level="stage3")
    train_backbone(noisy, tmp_path / "noisy_backbone", tiny_config())
    with pytest.raises(InputError, match="noise_level"):
        faithfulness_evaluation(
            explanations, patches, tmp_path / "noisy_backbone", tmp / "xdnn", **common
        )
    assert not (tmp_path / "out").exists()
