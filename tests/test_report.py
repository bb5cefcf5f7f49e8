"""The HTML report and the prediction figures, on a small results folder written in the real
formats (test metrics and predictions of the model runs, summary statistics, the science step's
tables, a patch store)."""

from __future__ import annotations

import base64
import html
import json
import re
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from fixtures.stores import INGEST_ATTRS, write_patch_store
from markupsafe import escape
from matplotlib.figure import Figure

from cosmo_sop import layout
from cosmo_sop.cli import main
from cosmo_sop.errors import InputError
from cosmo_sop.faithfulness.summary import Entry, summarise, summary_dataset, write_summary_csv
from cosmo_sop.figures.predictions import (
    plot_mse_per_level,
    plot_predicted_vs_true,
    read_model_predictions,
)
from cosmo_sop.report import (
    read_test_metrics,
    sop_backbone_ratio,
    verdict_sentence,
    verdict_summary,
    write_report,
)
from cosmo_sop.report.inputs import benchmark_files, read_benchmarks, read_verdicts
from cosmo_sop.report.sections import TIMING_HEADER, timing
from cosmo_sop.report.tables import number
from cosmo_sop.storage import write_zarr
from cosmo_sop.structures import assess, classify, group_statistics, verdicts, weight_table
from cosmo_sop.structures.nulls import uniform_scores
from cosmo_sop.structures.records import group_pixel_fractions, weights_json
from cosmo_sop.structures.run import write_weights_csv

PNG = b"\x89PNG\r\n\x1a\n"
NAMES = ["Om", "s8"]
#: Standardised test MSE per model: SOP is 10 % worse for Om, 60 % worse for s8.
MSE = {"backbone": (0.10, 0.05), "xdnn": (0.20, 0.15), "sop": (0.11, 0.08)}
STD = np.array([0.1, 0.2])  # train std of (Om, s8): physical MSE = std^2 * standardised MSE
WEIRD_METHOD = "X-Grad <b>&"


def _write_model(
    level: Path, name: str, mse: tuple[float, float], rng, n: int = 40, groups: dict | None = None
) -> None:
    """A run folder's test metrics; ``groups``: SOP's records (groups, floor, versus_backbone)."""
    run = level / "models" / name
    run.mkdir(parents=True)
    metrics = {
        "n_test_maps": n,
        "mse_standardised": dict(zip(NAMES, mse)),
        "mse": dict(zip(NAMES, (np.asarray(mse) * STD**2).tolist())),
        "noise_level": level.name,
    }
    metrics.update(groups or {})
    (run / "test_metrics.json").write_text(json.dumps(metrics))
    targets = np.column_stack([rng.uniform(0.1, 0.5, n), rng.uniform(0.6, 1.0, n)])
    predictions = targets + rng.normal(0, 1, (n, 2)) * STD * np.sqrt(mse)
    np.savez(
        run / "test_predictions.npz",
        sample=np.arange(n),
        predictions=predictions,
        targets=targets,
        names=np.array(NAMES),
    )


def _write_summary(level: Path, rng, n: int = 40) -> None:
    regressors = {
        kind: {"mse_standardised": {"Om": m, "s8": m}, "mse": {"Om": m, "s8": m}, "fit": {}}
        for kind, m in (("mlp", 0.3), ("ridge", 0.4))
    }
    (level / "summary_statistics.json").write_text(
        json.dumps(
            {
                "regressor": "mlp",
                "regressors": regressors,
                "n_maps": {"train": 8, "val": 1, "test": n},
                "targets": NAMES,
            }
        )
    )
    true = np.column_stack([rng.uniform(0.1, 0.5, n), rng.uniform(0.6, 1.0, n)])
    np.savez(
        level / "summary_statistics.npz",
        names=np.array(NAMES),
        sample=np.arange(n),
        true=true,
        predicted_mlp=true + 0.05,
        predicted_ridge=true - 0.05,
    )


def _png(path: Path, text: str) -> None:
    fig = Figure(figsize=(2, 1.5))
    fig.text(0.5, 0.5, text, ha="center")
    fig.savefig(path, format="png", dpi=40)


def _write_science(level: Path, rng) -> dict[str, str]:
    """science/ as the science step writes it; returns the verdict sentences."""
    science = level / "science"
    science.mkdir(parents=True)
    # voids and clusters: real group statistics, weights and verdicts of random groups whose
    # weights favour Om for the low-kappa groups and s8 for the high-kappa ones
    n, m = 30, 4
    sigma = rng.standard_normal((n, 8, 8))
    masks = np.zeros((n, m, 8, 8), bool)
    masks[:, 0] = sigma > 2.0
    masks[:, 1] = sigma < -0.3
    masks[:, 2, :4] = True
    masks[:, 3, 4:] = True
    stats = group_statistics(sigma, masks)
    membership = classify(stats)
    scores = np.zeros((n, m, 2))
    scores[:, :, 0] = [0.1, 0.6, 0.15, 0.15]
    scores[:, :, 1] = [0.6, 0.1, 0.15, 0.15]
    valid = stats["valid"].values
    table = weight_table(scores, membership, valid, n_boot=200)
    # its nulls: uniform scores, and the trained scores on the groups shuffled among the maps
    nulls = {
        "uniform": weight_table(uniform_scores(valid, 2), membership, valid, n_boot=200),
        "random": weight_table(scores[rng.permutation(n)], membership, valid, n_boot=200),
    }
    # the layout of cosmo_sop.structures.run: the settings beside the verdict records
    content = {
        "outputs": NAMES,
        "confidence": 0.95,
        "n_maps": n,
        "n_blocks": 10,
        "bootstrap_blocks": "cosmology",
        "n_boot": 200,
        "seed": 0,
        "nonzero_only": False,
        "smoothing_pixels": 0.0,
        "noise_level": level.name,
        "explanations_store": "/somewhere/explanations.zarr",
        "definitions": [{"name": "void", "kind": "void"}],
        "weights": weights_json(table),
        "group_pixels": group_pixel_fractions(stats, 8 * 8),
        "verdicts": assess(verdicts(table), table, nulls),
    }
    (science / "verdicts.json").write_text(json.dumps(content))
    sentences = {r["definition"]: verdict_sentence(r, content) for r in content["verdicts"]}
    write_weights_csv(table, science / "weights.csv")
    (science / "purity_sop.json").write_text(
        json.dumps(
            {
                "purity": {
                    "Om": {"purity": 0.71, "ci_low": 0.66, "ci_high": 0.77, "n_maps": n},
                    "s8": {"purity": 0.64, "ci_low": 0.58, "ci_high": 0.7, "n_maps": n},
                },
                "top_groups": "groups with non-zero weight for the output",
                "n_boot": 200,
            }
        )
    )
    (science / "purity.csv").write_text(
        "method,output,purity,ci_low,ci_high,n_maps\n"
        "SOP,Om,0.71,0.66,0.77,30\nsaliency,Om,0.583,0.5,0.6,30\n"
    )
    # faithfulness: the real summary writer, on per-map scores of two cosmologies
    _write_faithfulness(science)
    for name in ("faithfulness_curves", "weight_histograms", "example_groups", "example_groups_2"):
        _png(science / f"{name}.png", name)
    return sentences


def _write_patches(level: Path, config: dict) -> None:
    """A patch store with the attributes the report reads: the config, the noise level."""
    write_patch_store(
        level / "patches.zarr",
        np.zeros((2, 1, 4, 4), np.float32),
        {},
        drop=INGEST_ATTRS,
        noise_level=level.name,
        noise={"name": level.name, "shape_noise": False},
        sigma_pix=[0.0],
        config=json.dumps(config),
    )


@pytest.fixture
def results(tmp_path) -> tuple[Path, dict[str, str]]:
    """noiseless: everything; stage3: the backbone only (the rest not computed yet)."""
    rng = np.random.default_rng(3)
    root = tmp_path / "results"
    full = root / "noiseless"

    def sop_records(tau: float, sparsity: float, ratio: float) -> dict:
        groups = {
            "n_maps": 40,
            "n_groups": 20,
            "tokens": "segments",
            "keep_fraction": tau,
            "nonzero_groups_per_map": {"Om": 3.25, "s8": 2.5},
            "mean_group_size": {"Om": 0.125, "s8": 0.2},
            "sparsity": {"Om": sparsity, "s8": sparsity},
            "sparsity_mass": 0.9,
        }
        interval = {"ratio": ratio, "ci_low": ratio - 0.25, "ci_high": ratio + 0.5}
        versus = {"Om": interval, "s8": interval, "n_maps": 40, "n_cosmologies": 7, "n_boot": 100}
        floor = {
            "n_maps": 40,
            "n_groups": 20,
            "keep_fraction": tau,
            "single_group": {"Om": 0.4321, "s8": 0.4837},
            "uniform_average": {"Om": 0.3739, "s8": 0.4431},
        }
        return {"groups": groups, "floor": floor, "versus_backbone": versus}

    for name, mse in MSE.items():
        records = sop_records(0.2, 0.1234, 1.1) if name == "sop" else None
        _write_model(full, name, mse, rng, groups=records)
    _write_model(full, "sop_tau0.5", (0.09, 0.06), rng, groups=sop_records(0.5, 0.5678, 1.05))
    _write_summary(full, rng)
    sentences = _write_science(full, rng)
    _write_patches(full, {"seed": 42, "sop": {"n_groups": 20}})
    scores = np.full((12, 4, 2), 0.25)
    write_zarr(
        xr.Dataset({"scores": (("sample", "group", "output"), scores)}, coords={"output": NAMES}),
        full / "explanations.zarr",
    )
    _write_model(root / "stage3", "backbone", (0.3, 0.2), rng)
    return root, sentences


def _images(page: str) -> list[bytes]:
    return [base64.b64decode(b) for b in re.findall(r'src="data:image/png;base64,([^"]+)"', page)]


def _write_faithfulness(science: Path) -> None:
    """faithfulness.csv and .zarr of SOP and one method on 4 maps of 2 cosmologies: SOP's Ins
    lower by exactly 0.2 on every map (significant: with 400 resamples, p = 2 / 401 on each of
    4 such differences, 0.0075 after Benjamini-Hochberg over 6), Del differing by +-0.1 (not)."""
    entries = [Entry("sop", "token", "backbone"), Entry(WEIRD_METHOD, "pixel", "backbone")]
    metrics, outputs = ["MSE top-20%", "Ins", "Del"], ["Om", "s8"]
    scores = np.zeros((4, 2, 3, 2))
    scores[:, 0, 0] = 0.31
    scores[:, 1, 0] = 0.52
    scores[:, 0, 1] = 0.2
    scores[:, 1, 1] = 0.4
    scores[:, 0, 2] = 0.5
    scores[:, 1, 2] = [[0.4, 0.4], [0.6, 0.6], [0.4, 0.4], [0.6, 0.6]]
    cosmologies = np.array(["a", "b", "a", "b"])
    summary = summarise(scores, entries, cosmologies, 400, 0)
    table = summary_dataset(summary, entries, metrics, outputs)
    table.attrs |= {"n_maps": 4, "n_boot": 400, "skipped": "{}"}
    write_summary_csv(table, science / "faithfulness.csv")
    write_zarr(table, science / "faithfulness.zarr")


def test_report_has_every_section_numbers_verdicts_and_figures(results, tmp_path):
    root, sentences = results
    out = write_report(root, ["noiseless", "stage3"], tmp_path / "out" / "report.html")
    assert out == tmp_path / "out" / "report.html"
    assert sorted(p.name for p in out.parent.iterdir()) == ["report.html"]  # nothing else left
    page = out.read_text(encoding="utf-8")
    for title in (
        "Summary across noise levels",
        "Config used",
        "Noise level: noiseless",
        "Noise level: stage3",
        "(a) Recovering",
        "(b) Faithfulness",
        "(c) Voids and clusters",
        "SOP's groups",
    ):
        assert title in page or html.escape(title) in page, title
    assert "<script" not in page.lower()  # no JavaScript, and user text is escaped
    assert html.escape(WEIRD_METHOD) in page and WEIRD_METHOD not in page

    # (a) the MSE of each model, standardised and physical, the number of test maps
    for name, (om, s8) in MSE.items():
        assert f'<td class="num">{om:.4g}</td>' in page or f'best">{om:.4g}<' in page, name
        assert f"{s8 * STD[1] ** 2:.4g}" in page
    assert "Summary statistics (mlp)" in page and "Summary statistics (ridge)" in page
    assert '<td class="num">40</td>' in page
    # SOP against the backbone, stated plainly: 1.1 for Om (met), 1.4 for s8 (missed)
    assert "1.100 (SOP 10 % worse" in page and "1.600 (SOP 60 % worse" in page
    assert "target met" in page and "target missed" in page
    assert "ratio ≤ 1.50" in page and "67 % worse" in page
    # ... with its cosmology-bootstrap interval, the tokens, the floor and the tau sweep
    assert "1.1 [0.85, 1.6]" in page and "7 test cosmologies, 40 maps" in page
    assert "SOP's tokens: <b>segments</b>" in page
    assert "The floor under SOP" in page and "0.4321" in page and "0.3739" in page
    assert "the trained SOP is <b>below</b> the random-group average" in page  # 0.11 < 0.37
    assert "Group size against error and sparsity" in page and "SOP, τ = 0.5" in page
    assert page.index("0.1234") < page.index("0.5678")  # sparsity, the tau 0.2 row first

    # (b) faithfulness: the table of the CSV with the direction of each metric
    assert "lower is better" in page and "higher is better" in page
    assert "0.2 [0.2, 0.2]" in page  # SOP's insertion AUC for Om with its interval
    assert "Computed on 4 test maps from 2 cosmologies." in page
    assert "bootstrap over whole cosmologies (400 resamples" in page
    assert "no p-value of so many resamples is below 2 / 401 = 0.004988" in page
    assert escape(f"{WEIRD_METHOD}, per pixel (on backbone)") in page
    assert '<td class="best">-0.2 [-0.2, -0.2]</td>' in page  # SOP − method: bold, CI < 0
    assert '<td class="best">0.1 [' not in page  # a difference whose CI spans zero: not bold
    assert "Benjamini–Hochberg correction for the table's 6 comparisons" in page
    assert "below 0.05): 4 of them." in page
    assert "Explanation store: 12 test maps, 4 groups each." in page
    assert "How far the selectors moved from uniform scores" in page
    assert escape("Here SOP's groups hold 1.56–50 % of a map's pixels") in page

    # (c) the verdict sentences, the paper comparison, SOP's group statistics
    for sentence in sentences.values():
        assert escape(sentence) in page
    assert "/somewhere" not in page  # settings beside the verdicts are not taken for verdicts
    assert (
        "30 maps resampled in 10 blocks (by cosmology); 200 bootstrap replicates; "
        "95 % intervals (percentile for the mean weights, BCa for the ratios); "
        "zero-weight groups included." in page
    )
    assert sum("agrees with the paper" in s for s in sentences.values()) >= 2
    assert "Does this run agree with the paper?" in page
    # both hypotheses of every class, against their own nulls, with Holm-adjusted p-values
    assert re.search(r"selector hypothesis \(.*?\): \d findings? among \d class(es)? tested", page)
    assert re.search(r"groups hypothesis \(.*?\): \d findings? among \d class(es)? tested", page)
    assert "Holm p" in page and "log ratio, SOP − null" in page
    assert "selector: finding, beyond uniform scores, trained groups (Holm p" in page
    # the planted control's measured power and false positives, as the package records them
    assert "Does the test find a planted effect, and stay silent without one?" in page
    assert "findings, signal on (power)" in page
    assert re.search(r"voids \(paper: .*?\): \d+ definitions?: \d+ agree", page)
    assert "3.25" in page and "12.5" in page  # non-zero groups per map, mean size in %
    assert '<td class="num">0.71</td><td class="num">0.66</td>' in page  # SOP's purity
    assert "<td>saliency</td><td>Om</td>" in page  # every method's purity
    assert "ratio Om s8" in page and "mean weight all" in page

    # the config from the patch store, and stage3's missing parts
    assert escape('"seed": 42') in page
    stage3 = page[page.index("Noise level: stage3") :]
    assert stage3.count("not computed") >= 5
    assert "Faithfulness table (science/faithfulness.csv): not computed" in stage3

    images = _images(page)
    # summary bars, predicted-vs-true of both levels, curves, histograms, 2 example groups
    assert len(images) == 7 and all(i.startswith(PNG) for i in images)
    assert page.index('alt="example groups"') < page.index('alt="example groups 2"')


def test_report_of_a_run_with_nothing_computed_says_so(tmp_path):
    science = tmp_path / "results" / "noiseless" / "science"
    science.mkdir(parents=True)
    record = {
        "definition": "c",
        "kind": "cluster",
        "rule": "mean > 2σ",
        "n_groups": 4,
        "ratio": 0.9,
        "ci_low": 0.7,
        "ci_high": 1.2,
        "outcome": "inconclusive",
        "agrees": None,
        "expected_heavier": "s8",
    }
    (science / "verdicts.json").write_text(
        json.dumps(
            {"outputs": NAMES, "confidence": 0.95, "n_maps": 3, "n_blocks": 3, "verdicts": [record]}
        )
    )
    sentence = (
        "clusters 'c' (mean > 2σ): Om/s8 weight ratio 0.9 [0.7, 1.2] (95% CI, 3 maps, "
        "4 groups) — inconclusive (CI includes 1)"
    )
    out = write_report(tmp_path / "results", ["noiseless", "absent"], tmp_path / "r.html")
    page = out.read_text(encoding="utf-8")
    assert "Test metrics of the models and of the summary statistics: not computed" in page
    assert "no folder" in page and "not computed" in page
    assert escape(sentence) in page and "clusters: 1 inconclusive" in page
    assert _images(page) == []


def test_report_refuses_unreadable_inputs_and_writes_nothing(results, tmp_path):
    root, _ = results
    out = tmp_path / "report.html"
    with pytest.raises(InputError, match="results folder not found"):
        write_report(tmp_path / "nowhere", ["noiseless"], out)
    with pytest.raises(InputError, match="non-empty list"):
        write_report(root, [], out)
    (root / "noiseless" / "science" / "verdicts.json").write_text("{not json")
    with pytest.raises(InputError, match=r"verdicts\.json: not a readable JSON"):
        write_report(root, ["noiseless"], out)
    (root / "noiseless" / "science" / "verdicts.json").unlink()
    (root / "noiseless" / "science" / "example_groups.png").write_text("GIF89a")
    with pytest.raises(InputError, match=r"example_groups\.png: is not a PNG"):
        write_report(root, ["noiseless"], out)
    (root / "noiseless" / "science" / "example_groups.png").unlink()
    (root / "noiseless" / "models" / "sop" / "test_metrics.json").write_text('{"mse": {}}')
    with pytest.raises(InputError, match=r"sop.test_metrics\.json: lacks 'mse_standardised'"):
        write_report(root, ["noiseless"], out)
    assert not out.exists()


def test_metrics_ratio_and_verdict_counts(results):
    root, sentences = results
    metrics = read_test_metrics(root / "noiseless")
    assert list(metrics) == [
        "CNN backbone",
        "X-DNN",
        "SOP",
        "SOP, τ = 0.5",
        "Summary statistics (mlp)",
        "Summary statistics (ridge)",
    ]
    assert metrics["SOP"]["groups"]["n_groups"] == 20
    ratios = sop_backbone_ratio(metrics)
    assert ratios["Om"] == pytest.approx(1.1) and ratios["s8"] == pytest.approx(1.6)
    assert ratios["both"] == pytest.approx((0.11 + 0.08) / (0.10 + 0.05))
    assert sop_backbone_ratio(read_test_metrics(root / "stage3")) is None
    counts = verdict_summary(
        [
            {"definition": "v", "kind": "void", "outcome": "agrees"},
            {"definition": "w", "kind": "void", "outcome": "disagrees"},
            {"definition": "c", "kind": "cluster", "outcome": "no_groups"},
            {"definition": "d", "kind": "cluster", "outcome": "inconclusive"},
        ]
    )
    assert counts["void"] == {"disagree": 1, "agree": 1, "inconclusive": 0, "no verdict": 0}
    assert counts["cluster"] == {"disagree": 0, "agree": 0, "inconclusive": 1, "no verdict": 1}
    # The paper says nothing about a record without a kind: not counted.
    assert verdict_summary([{"definition": "x", "kind": None, "outcome": "no_expectation"}]) == {}


def test_verdict_sentences_of_every_outcome():
    """The sentences the report writes from verdict records (those the structures step wrote
    before it recorded verdicts as data)."""
    settings = {"outputs": NAMES, "confidence": 0.95, "n_maps": 30, "n_blocks": 10}
    numbers = {"ratio": 1.2149, "ci_low": 1.0512, "ci_high": 1.3833, "n_groups": 34}
    void = {"definition": "void", "kind": "void", "rule": "mean < 0σ", **numbers}
    cluster = {"definition": "cl", "kind": "cluster", "rule": "mean > 2σ", **numbers}
    head = "Om/s8 weight ratio 1.21 [1.05, 1.38] (95% CI, 30 maps in 10 blocks, 34 groups)"
    cases = [
        (
            void | {"outcome": "agrees"},
            f"voids 'void' (mean < 0σ): {head} — agrees with the paper (voids weigh more for Om)",
        ),
        (
            cluster | {"outcome": "disagrees"},
            f"clusters 'cl' (mean > 2σ): {head} — disagrees with the paper (which finds clusters "
            "weigh more for s8)",
        ),
        (
            void | {"outcome": "inconclusive", "ci_low": None, "ci_high": None},
            "voids 'void' (mean < 0σ): Om/s8 weight ratio 1.21 [nan, nan] (95% CI, 30 maps in 10 "
            "blocks, 34 groups) — inconclusive (CI includes 1)",
        ),
        (
            # An infinite upper bound (JSON null beside a finite lower bound), as the old
            # sentences wrote it.
            cluster | {"outcome": "inconclusive", "ci_low": 0.389, "ci_high": None},
            "clusters 'cl' (mean > 2σ): Om/s8 weight ratio 1.21 [0.389, inf] (95% CI, 30 maps in "
            "10 blocks, 34 groups) — inconclusive (CI includes 1)",
        ),
        (
            cluster | {"outcome": "no_groups", "n_groups": 0},
            "clusters 'cl' (mean > 2σ): no groups in this class (30 maps in 10 blocks) — no verdict",
        ),
        (
            cluster | {"outcome": "undefined", "ratio": None},
            "clusters 'cl' (mean > 2σ): ratio undefined, zero mean weight for s8 (30 maps in 10 "
            "blocks, 34 groups) — no verdict",
        ),
        (
            void | {"kind": None, "rule": None, "outcome": "no_expectation"},
            f"'void' (rule not recorded): {head} — no paper expectation for kind ''",
        ),
    ]
    for record, sentence in cases:
        assert verdict_sentence(record, settings) == sentence
    one_block_each = settings | {"n_blocks": 30}
    assert "(95% CI, 30 maps, 34 groups)" in verdict_sentence(cases[0][0], one_block_each)


def test_read_model_predictions_orders_columns_by_name(tmp_path):
    run = tmp_path / "models" / "sop"
    run.mkdir(parents=True)
    targets = np.array([[0.8, 0.3], [0.9, 0.2]])  # columns s8, Om
    np.savez(
        run / "test_predictions.npz",
        sample=np.arange(2),
        predictions=targets + 0.01,
        targets=targets,
        names=np.array(["s8", "Om"]),
    )
    out = read_model_predictions(tmp_path)
    assert list(out) == ["SOP"]
    np.testing.assert_allclose(out["SOP"][0], targets[:, ::-1])
    with pytest.raises(InputError, match="has no parameter"):
        read_model_predictions(tmp_path, names=("Om", "h"))
    (run / "test_predictions.npz").write_bytes(b"not a zip")
    with pytest.raises(InputError, match="not a readable .npz"):
        read_model_predictions(tmp_path)


def test_prediction_figures_write_png_and_pdf(tmp_path, results):
    root, _ = results
    predictions = read_model_predictions(root / "noiseless")
    assert len(predictions) == 5
    out = plot_predicted_vs_true(predictions, tmp_path / "figs" / "pvt.png")
    assert out.read_bytes().startswith(PNG)
    assert out.with_suffix(".pdf").read_bytes().startswith(b"%PDF")
    table = {
        "noiseless": {"CNN backbone": {"Om": 0.1, "s8": 0.05}, "SOP": {"Om": 0.11}},
        "stage3": {"CNN backbone": {"Om": 0.3, "s8": 0.2}},
    }
    out = plot_mse_per_level(table, tmp_path / "figs" / "mse.png")
    assert out.read_bytes().startswith(PNG) and out.with_suffix(".pdf").is_file()
    with pytest.raises(InputError, match="must both be"):
        plot_predicted_vs_true({"bad": (np.zeros((3, 2)), np.zeros((3, 3)))}, tmp_path / "x.png")
    with pytest.raises(InputError, match="finite"):
        plot_predicted_vs_true(
            {"bad": (np.zeros((3, 2)), np.full((3, 2), np.nan))}, tmp_path / "x.png"
        )
    with pytest.raises(InputError, match="at least one noise level"):
        plot_mse_per_level({}, tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()


def test_report_sets_other_runs_and_the_halo_checks_beside_this_one(results, tmp_path):
    """report.compare_with: the other run's CNN and summary-statistics errors and its
    void/cluster ratios per level, "not computed" where it lacks them; the halo checks from
    figures/mock_halos.json."""
    root, _ = results
    other = tmp_path / "other"
    rng = np.random.default_rng(5)
    _write_model(other / "noiseless", "backbone", (0.0123, 0.0456), rng)
    _write_summary(other / "noiseless", rng)
    # 40 test maps of 8 cosmologies: the bootstrap unit of the CNN / summary-statistics ratio
    cosmologies = ("sample", np.repeat(np.arange(8), 5))
    write_patch_store(
        other / "noiseless" / "patches.zarr",
        np.zeros((40, 1, 4, 4), np.float32),
        {"cosmology": cosmologies},
        drop=INGEST_ATTRS,
    )
    figures = root / "figures"
    figures.mkdir()
    numbers = {
        "sigma8": [0.6, 0.8, 1.0],
        "omega_m": 0.3,
        "counts": {"total_sampled": 152164},
        "peaks": {
            "thresholds": [4.0],
            "lognormal": [[99], [2403], [10155]],
            "with_halos": [[489], [7417], [25824]],
            "log_slope": {"lognormal": [9.16], "with_halos": [7.84]},
            "fisher_sigma8": {"lognormal": [263013.0], "with_halos": [540871.0]},
        },
    }
    (figures / "mock_halos.json").write_text(json.dumps(numbers))
    _png(figures / "mock_halo_peaks.png", "peaks")
    config = {"report": {"compare_with": [{"label": "lognormal-only mock", "results": str(other)}]}}
    page = write_report(root, ["noiseless", "stage3"], tmp_path / "r.html", config=config)
    page = page.read_text(encoding="utf-8")
    comparison = page[page.index('id="comparison"') :]
    assert "lognormal-only mock" in comparison
    assert "0.0123 / 0.0456" in comparison  # the other run's CNN
    assert "Summary statistics" in comparison
    assert "not computed" in comparison  # its voids and clusters, its stage3
    ratio_row = comparison[comparison.index("CNN / Summary statistics (mlp) MSE") :]
    ratio_row = ratio_row[: ratio_row.index("</tr>")]
    # this run's patch store has no cosmology coordinate: no interval; the other's has one
    assert ratio_row.count("not computed") == 1 and ratio_row.count("] / ") == 1
    assert 'class="best"' in ratio_row  # both intervals exclude 1
    first_ratio = read_verdicts(root / "noiseless" / "science" / "verdicts.json")["verdicts"][0]
    assert number(first_ratio["ratio"], 3) in comparison
    halos = page[page.index('id="mock-halos"') : page.index('id="comparison"')]
    assert "152164 halos" in halos and "= 0.8 in the diagnostic run" in halos
    assert "489 / 7417 / 25824" in halos and "5.41e+05" in halos
    # without compare_with and the JSON neither section is there
    (figures / "mock_halos.json").unlink()
    plain = write_report(root, ["noiseless"], tmp_path / "p.html").read_text(encoding="utf-8")
    assert 'id="comparison"' not in plain and 'id="mock-halos"' not in plain


def test_calibration_rows_set_power_beside_false_positives():
    from cosmo_sop.report.verdicts import calibration_rows

    rows = [
        {"signal": s, "definition": "void_paper", "hypothesis": "selector", "findings": k,
         "runs": 5, "rate": k / 5, "ci_low": lo, "ci_high": hi}
        for s, k, lo, hi in (("structures", 5, 0.48, 1.0), ("smooth", 0, 0.0, 0.52))
    ]  # fmt: skip
    assert calibration_rows({"rows": rows}) == [
        ["void_paper", "selector", "5 of 5 (1.00 [0.48, 1.00])", "0 of 5 (0.00 [0.00, 0.52])"]
    ]


# --- where the time went: the jobs' benchmark records --------------------------------------------


def _benchmark(
    results: Path, rule: str, name: str, seconds: float, rss: float | None, extended=False
) -> Path:
    """A job's benchmark record as Snakemake writes it (its own writer), at
    layout.benchmark(results, rule, name); ``rss`` None: no sample taken ("NA")."""
    from snakemake.benchmark import BenchmarkRecord, write_benchmark_records

    record = BenchmarkRecord(
        running_time=seconds,
        max_rss=rss,
        max_vms=2 * (rss or 0),
        max_uss=rss,
        max_pss=rss,
        io_in=1.0,
        io_out=2.0,
        cpu_time=seconds,
    )
    # the job's details, as Snakemake's executor sets them (extended format only)
    record.jobid, record.rule_name, record.threads, record.input = 1, rule, 1, []
    record.wildcards, record.params, record.resources = {}, {}, {}
    record.data_collected = rss is not None
    record.process_gone = rss is None  # a job faster than the first sample, as Snakemake says
    path = layout.benchmark(results, rule, name)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_benchmark_records([record], str(path), extended)
    return path


def _timing_rows(page: str) -> list[list[str]]:
    """The cells of the page's timing table, row by row."""
    section = page[page.index('<h2 id="timing">') :]
    body = section[section.index("<tbody>") : section.index("</tbody>")]
    return [re.findall(r"<td[^>]*>(.*?)</td>", row) for row in body.split("<tr>")[1:]]


def test_the_timing_table_sums_snakemakes_records_per_rule(tmp_path):
    """Records written by Snakemake's own writer (one in its extended format), read from
    results/benchmarks/<rule>/<job>.tsv and summed per rule into the report's table."""
    results = tmp_path / "results"
    _benchmark(results, "train_backbone", "train_backbone_noiseless", 100.0, 500.0)
    _benchmark(results, "train_backbone", "train_xdnn_noiseless", 50.25, 700.5, extended=True)
    _benchmark(results, "plot_patches", "plot_patches", 2.0, None)
    _benchmark(results, "explain", "explain_noiseless", 12345.6, 3.2)  # 3 h 25 min 46 s
    _benchmark(results, "ingest", "ingest", 30.0, 900.0)
    (results / "noiseless").mkdir()

    jobs = read_benchmarks(benchmark_files(results))
    assert [(j.rule, j.path.stem) for j in jobs] == [
        ("explain", "explain_noiseless"),
        ("ingest", "ingest"),
        ("plot_patches", "plot_patches"),
        ("train_backbone", "train_backbone_noiseless"),
        ("train_backbone", "train_xdnn_noiseless"),
    ]
    assert [j.seconds for j in jobs] == [12345.6, 30.0, 2.0, 100.0, 50.25]
    assert [j.max_rss_mib for j in jobs] == [3.2, 900.0, None, 500.0, 700.5]

    shown = timing(jobs)
    assert shown["jobs"] == 5 and shown["seconds"] == pytest.approx(12527.85)
    assert shown["clock"] == "3 h 28 min 48 s" and shown["peak"] == 900.0
    page = write_report(results, ["noiseless"], tmp_path / "report.html").read_text()
    header = ("rule", "jobs", "seconds, all jobs", "seconds, longest job", "peak memory (MiB)")
    assert header == TIMING_HEADER and "".join(f"<th>{h}</th>" for h in header) in page
    # the rule of most seconds first, whole seconds from 10 s on (no exponent), "–" where no
    # memory sample was taken, the total last
    assert _timing_rows(page) == [
        ["explain", "1", "12346", "12346", "3"],
        ["train_backbone", "2", "150", "100", "700"],
        ["ingest", "1", "30", "30", "900"],
        ["plot_patches", "1", "2", "2", "–"],
        ["all jobs", "5", "12528", "12346", "900"],
    ]
    assert "5 jobs ran for 12528 s in all (3 h 28 min 48 s)" in page
    assert "the largest peak memory of a job: 900 MiB" in page
    assert "the sum exceeds the wall time" in page
    # the workflow passes the records of every job but the report's own
    given = [layout.benchmark(results, "ingest", "ingest")]
    page = write_report(results, ["noiseless"], tmp_path / "r.html", benchmarks=given).read_text()
    assert _timing_rows(page) == [
        ["ingest", "1", "30", "30", "900"],
        ["all jobs", "1", "30", "30", "900"],
    ]


def test_a_run_without_benchmark_records_says_so(tmp_path):
    (tmp_path / "results").mkdir()
    page = write_report(tmp_path / "results", ["noiseless"], tmp_path / "r.html").read_text()
    benchmarks = tmp_path / "results" / "benchmarks"
    assert (
        f"Table of the jobs&#39; times (no benchmark record in {benchmarks}): not computed" in page
    )
    assert timing([]) is None


HEADER = "s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("", "not a Snakemake benchmark record: its header lacks the columns ['s', 'max_rss']"),
        (
            "wall\tmemory\n1\t2\n",
            "not a Snakemake benchmark record: its header lacks the columns ['s', 'max_rss']",
        ),
        (HEADER, "benchmark record without a row (the job did not finish?)"),
        (HEADER + "12.5\t0:00:12\t100\n", "line 2 has 3 fields, the header 10"),
        (HEADER + "soon\t0:00:12" + "\t1" * 8 + "\n", "line 2: 's' is 'soon', not a number"),
        (HEADER + "NA\t0:00:12" + "\t1" * 8 + "\n", "line 2: no wall time 's'"),
        (HEADER + "1\t0:00:01\t-3" + "\t1" * 7 + "\n", "line 2: 'max_rss' is '-3', not a number"),
        (b"\xff\xfe".decode("latin-1"), "not a readable benchmark record"),
    ],
)
def test_a_malformed_benchmark_record_is_one_line_naming_it(tmp_path, text, problem):
    path = layout.benchmark(tmp_path / "results", "segment", "segment_noisy")
    path.parent.mkdir(parents=True)
    path.write_text(text, encoding="latin-1")
    with pytest.raises(InputError) as info:
        write_report(tmp_path / "results", ["noisy"], tmp_path / "r.html")
    message = str(info.value)
    assert message.startswith(f"{path}: {problem}") and "\n" not in message
    assert not (tmp_path / "r.html").exists()


def test_a_missing_benchmark_record_stops_the_report_command_in_one_line(tmp_path, capsys):
    (tmp_path / "results").mkdir()
    missing = tmp_path / "results" / "benchmarks" / "ingest" / "ingest.tsv"
    out = tmp_path / "r.html"
    arguments = ["--results", str(tmp_path / "results"), "--levels", "noiseless"]
    status = main(["report", *arguments, "--output", str(out), "--benchmarks", str(missing)])
    assert status == 2 and not out.exists()
    assert capsys.readouterr().err.strip().endswith(f"{missing}: benchmark record not found")
