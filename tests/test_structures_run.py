"""The structures step: voids and clusters among SOP groups, their weights and verdicts."""

from __future__ import annotations

import json

import numpy as np
import pytest
import xarray as xr
from fixtures.records import read_csv_rows
from fixtures.runs import write_stores

from cosmo_sop.config import validate_config
from cosmo_sop.errors import InputError
from cosmo_sop.structures import DEFAULT_DEFINITIONS, classify, group_statistics, sigma_map
from cosmo_sop.structures.run import run


def _config(seed: int = 0, **structures) -> dict:
    """A validated config with these keys of ``structures`` (the rest: the schema's defaults)."""
    return validate_config({"seed": seed, "structures": structures})


def test_structure_analysis_writes_weights_verdicts_and_figures(science_runs, tmp_path):
    tmp, patches, segments, explanations = science_runs
    # the tiny stores' 4 test cosmologies; every null, the optional initial SOP too
    config = _config(seed=1, n_boot=200, min_blocks=4, nulls=["initial", "uniform", "random"])
    result = run(
        config, explanations=explanations, patches=patches, out_dir=tmp_path, segments=segments
    )

    for name in (
        "weights.csv",
        "verdicts.json",
        "purity_sop.json",
        "weight_histograms.png",
        "weight_histograms.pdf",
        "example_groups.png",
        "example_groups_3.png",
    ):
        assert (tmp_path / name).is_file(), name
    rows = read_csv_rows(tmp_path / "weights.csv")
    names = [d.name for d in DEFAULT_DEFINITIONS]
    assert [(r["definition"], r["output"]) for r in rows] == [
        (d, o) for d in names for o in ("Om", "s8")
    ]

    # The void weights, recomputed here from the stores: sigma map of the explained maps' kappa,
    # smoothed as segmentation smooths (structures.smoothing_pixels null by default), a group is
    # a void when its mean is below 0 sigma.
    ds = xr.open_zarr(explanations)
    kappa = xr.open_zarr(patches).kappa.values[ds.store_index.values]
    sigma = sigma_map(kappa, config["segmentation"]["smoothing_pixels"])
    masks, valid, scores = ds.masks.values, ds.valid.values, ds.scores.values
    mean = (masks * sigma[:, None]).sum((2, 3)) / np.maximum(masks.sum((2, 3)), 1)
    void = valid & (masks.sum((2, 3)) > 0) & (mean < 0)
    assert void.any() and not void.all()
    for row in rows[:2]:
        o = ["Om", "s8"].index(row["output"])
        assert int(row["n_groups"]) == void.sum()
        assert float(row["mean_weight"]) == pytest.approx(scores[..., o][void].mean(), rel=1e-5)
        assert float(row["ci_low"]) <= float(row["mean_weight"]) <= float(row["ci_high"])

    # 16 x 16 patches of 25 % groups: nothing averages above 2 sigma, the class is empty.
    cluster = next(r for r in rows if r["definition"] == "cluster_paper")
    assert int(cluster["n_groups"]) == 0 and cluster["mean_weight"] == "nan"
    saved = json.loads((tmp_path / "verdicts.json").read_text())
    assert [v["definition"] for v in saved["verdicts"]] == names
    assert saved["verdicts"] == result["verdicts"]
    verdicts = {v["definition"]: v for v in saved["verdicts"]}
    cluster, void = verdicts["cluster_paper"], verdicts["void_paper"]
    assert cluster["outcome"] == "no_groups" and cluster["ratio"] is None
    assert cluster["finding"] is False
    assert isinstance(void["ratio"], float)
    assert void["outcome"] in ("agrees", "disagrees", "inconclusive")
    assert saved["outputs"] == ["Om", "s8"] and saved["confidence"] == 0.95
    assert saved["smoothing_pixels"] == config["segmentation"]["smoothing_pixels"] == 1.0
    # the default bootstrap resamples whole cosmologies, and verdicts.json says so
    assert (saved["n_boot"], saved["seed"], saved["bootstrap_blocks"]) == (200, 1, "cosmology")
    assert saved["min_blocks"] == 4 and void["n_contributing"] == 4
    assert saved["n_blocks"] == len(set(ds.cosmology.values)) < saved["n_maps"]
    assert saved["weights"]["cluster_paper"]["Om"]["mean_weight"] is None
    # 25 % groups of whole 4 x 4 tokens: a quarter of the pixels, a mean of at most sqrt(3) sigma
    shares = saved["group_pixels"]
    assert shares["p05"] == shares["median"] == shares["p95"] == 0.25
    assert shares["bound_low"] == shares["bound_high"] == pytest.approx(3**0.5)
    # every verdict carries the three nulls and both hypotheses; a finding is a Holm-adjusted
    # one-sided p below 0.05 on the paper's side, tested against the hypothesis's own null
    assert saved["nulls"] == ["initial", "uniform", "random"]
    for record in saved["verdicts"]:
        assert set(record["nulls"]) == {"initial", "uniform", "random"}
        assert set(record["hypotheses"]) == {"selector", "groups"}
        assert isinstance(record["finding"], bool)
        assert record["finding"] == record["hypotheses"]["selector"]["finding"]
        for hypothesis in record["hypotheses"].values():
            if hypothesis["finding"]:
                assert hypothesis["p_adjusted"] < 0.05
                assert hypothesis["p_adjusted"] >= hypothesis["p_value"]
    assert cluster["hypotheses"]["selector"]["untested"] == "no verdict: no_groups"
    if void["outcome"] != "too_few":
        test = void["nulls"]["uniform"]["test"]
        # uniform scores give a log ratio of exactly 0 in every replicate
        assert test["difference"] == pytest.approx(np.log(void["ratio"]))
        assert test["n_replicates"] == 200
    assert void["nulls"]["uniform"]["ratio"] == pytest.approx(1.0)
    assert void["nulls"]["uniform"]["n_groups"] == void["n_groups"]
    assert set(saved["null_weights"]) == {"initial", "uniform", "random"}
    assert "initial" in saved["null_notes"]
    assert saved["n_maps"] == ds.sizes["sample"] == result["n_maps"]

    purity = json.loads((tmp_path / "purity_sop.json").read_text())["purity"]
    for output in ("Om", "s8"):
        assert 0.0 <= purity[output]["purity"] <= 1.0
        assert purity[output] == result["purity_sop"][output]


def test_structure_analysis_with_own_definitions_and_cosmology_blocks(science_runs, tmp_path):
    _, patches, _, explanations = science_runs
    definitions = [
        {"name": "void_authors", "kind": "void", "mean_below": 0.0},
        {"name": "cluster_authors", "kind": "cluster", "mean_above": 0.0},
        {"name": "hot", "kind": "cluster", "fraction_above": 1.0, "min_fraction": 0.1},
    ]
    config = _config(definitions=definitions, n_boot=100, bootstrap_blocks="map", nulls=["uniform"])
    result = run(config, explanations=explanations, patches=patches, out_dir=tmp_path, n_examples=1)
    assert len(read_csv_rows(tmp_path / "weights.csv")) == 6
    n_maps = result["n_maps"]
    assert result["weights"].attrs["n_blocks"] == n_maps  # the map bootstrap, an option
    assert list(result["null_weights"]) == ["uniform"]  # no model needed for this null
    assert (tmp_path / "example_groups.png").is_file()
    assert not (tmp_path / "example_groups_2.png").exists()
    with pytest.raises(InputError, match="'cluster_authors'"):
        config = _config(definitions=definitions[:1], n_boot=10)
        run(config, explanations=explanations, patches=patches, out_dir=tmp_path)


def test_structure_analysis_classifies_on_the_map_smoothed_as_segmented(science_runs, tmp_path):
    """Groups are classified on the sigma map smoothed by structures.smoothing_pixels, null:
    by segmentation.smoothing_pixels; verdicts.json records the value used."""
    _, patches, _, explanations = science_runs
    ds = xr.open_zarr(explanations)
    kappa = xr.open_zarr(patches).kappa.values[ds.store_index.values]
    structures = {"n_boot": 10, "nulls": []}
    configs = {
        0.0: _config(**structures, smoothing_pixels=0.0),  # unsmoothed, whatever segmentation's
        3.0: validate_config(  # null: follows the segmentation's smoothing
            {"seed": 0, "segmentation": {"smoothing_pixels": 3.0}, "structures": structures}
        ),
    }
    counts = {}
    for smoothing, config in configs.items():
        out = tmp_path / str(smoothing)
        run(config, explanations=explanations, patches=patches, out_dir=out, n_examples=0)
        assert json.loads((out / "verdicts.json").read_text())["smoothing_pixels"] == smoothing
        stats = group_statistics(sigma_map(kappa, smoothing), ds.masks.values, ds.valid.values)
        expected = (classify(stats) & stats["valid"]).sum(("sample", "group"))
        counts[smoothing] = {
            r["definition"]: int(r["n_groups"])
            for r in read_csv_rows(out / "weights.csv")
            if r["output"] == "Om"
        }
        assert counts[smoothing] == {
            str(d): int(n) for d, n in zip(expected["definition"].values, expected.values)
        }
    # smoothing moves groups between classes
    assert counts[0.0] != counts[3.0]


def test_structure_analysis_refuses_another_patch_store(science_runs, tmp_path):
    _, _, _, explanations = science_runs
    noisy, _ = write_stores(tmp_path, noise_level="stage3")
    with pytest.raises(InputError, match="noise_level"):
        run(
            _config(n_boot=10, nulls=[]),
            explanations=explanations,
            patches=noisy,
            out_dir=tmp_path / "out",
        )
    assert not (tmp_path / "out").exists()
