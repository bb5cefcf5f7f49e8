"""The faithfulness step: SOP against post-hoc attributions of the backbone, one table."""

from __future__ import annotations

import json

import numpy as np
import pytest
import xarray as xr
from fixtures.records import read_csv_rows
from fixtures.runs import tiny_config, write_stores

from cosmo_sop.errors import InputError
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
    methods = list(DEFAULT_METHODS)
    assert list(table.attribution.values) == methods
    assert list(table.metric.values) == ROWS
    assert set(table.data_vars) == {"Om", "s8"}
    for output in ("Om", "s8"):
        assert np.isfinite(table[output].values).all(), output
    assert table.attrs["n_maps"] == 4 and len(json.loads(table.attrs["store_index"])) == 4
    assert dict(zip(table.metric.values, table.better.values))["purity"] == "higher"
    purity = table.sel(metric="purity").to_array().values
    assert ((purity >= 0) & (purity <= 1)).all()

    # SOP's sparsity: the share of the map covered by its groups of non-zero weight.
    ds = xr.open_zarr(explanations)
    chosen = np.flatnonzero(np.isin(ds.store_index.values, json.loads(table.attrs["store_index"])))
    used = (ds.scores.values[chosen] > 0) & ds.valid.values[chosen][..., None]  # (n, m, 2)
    covered = (ds.masks.values[chosen][:, :, None] & used[..., None, None]).any(1)  # (n, 2, H, W)
    for o, output in enumerate(("Om", "s8")):
        expected = covered[:, o].mean()
        assert float(table[output].sel(metric="sparsity", attribution="sop")) == pytest.approx(
            expected
        )

    for name in ("faithfulness.csv", "purity.csv", "faithfulness_curves.png", "faithfulness.zarr"):
        assert (tmp_path / "a" / name).exists(), name
    rows = read_csv_rows(tmp_path / "a" / "faithfulness.csv")
    assert len(rows) == 2 * len(ROWS) and all(set(methods) <= set(r) for r in rows)
    assert len(read_csv_rows(tmp_path / "a" / "purity.csv")) == 2 * len(methods)
    xr.testing.assert_identical(xr.open_zarr(tmp_path / "a" / "faithfulness.zarr").load(), table)

    # Deterministic: a second run gives the same table, to the bit.
    again = run(tmp_path / "b", False)
    xr.testing.assert_identical(again, table)
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
    assert list(table.attribution.values) == ["sop", "saliency"]
    assert set(json.loads(table.attrs["method_options"])) == {"saliency"}
    assert set(json.loads(table.attrs["skipped"])) == {"kernel_shap", "lime"}
    assert (tmp_path / "faithfulness.csv").is_file()
    assert not (tmp_path / "faithfulness_curves.png").exists()  # figures=False
    assert np.isfinite(table.Om.values).all()


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
