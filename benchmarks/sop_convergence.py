"""SOP to convergence: its MSE over its frozen backbone's against optimiser steps, validation and test.

    python benchmarks/sop_convergence.py RESULTS [--level noiseless] [--steps 192 384 768 1536 3072]
        [--work /work/sop_conv] [--write JSON] [--figure PNG] [--threads N]

Trains the demo's SOP (config/config.yaml: its ``sop`` section, seed, training maps and batch)
around the level's trained backbone (RESULTS/<level>/models/backbone) once, for the largest of
``--steps``, and at the end of the epoch that reaches each step count evaluates it on the
validation and the test split: SOP's MSE over the backbone's, per parameter, with the
cosmology-bootstrap interval of the workflow's test metrics
(:func:`~cosmo_sop.training.comparison.mse_ratio_to_backbone`; the backbone's validation
predictions are computed here, its test predictions read from its run folder). Step counts are
rounded up to whole epochs (96 steps of 32 maps on the demo's 3,072 maps).

One run stands for separate runs of each length, because the learning-rate schedule is made
independent of the total length: the demo's ``inverse_sqrt`` schedule warms up over
``warmup_fraction x epochs x steps_per_epoch`` steps, which grows with ``epochs``, so this run
keeps the demo's warm-up (0.1 x 192 = 19.2 steps) whatever its length
(``warmup_fraction`` scaled by 2 / epochs); after the warm-up the rate is sqrt(19.2 / step)
at every length. The point at 192 steps is therefore the demo's SOP itself (compare its
``test_metrics.json``). Two more differences from a workflow run of ``sop.training.epochs: E``:
early stopping is off (``patience`` = epochs), and each point evaluates the weights at the end
of its epoch, whereas a workflow run returns those of its best validation epoch; the table's
``best`` column says whether that epoch was the best so far (then the two agree). A workflow
run with more epochs would also warm up longer (0.1 x its steps); that variant is not measured.

Prints, as each point is measured, a row: steps | training minutes so far | validation ratio
Om, s8 [95% interval] | test ratio Om, s8 [interval] | SOP test MSE (standardised) Om, s8;
minutes count training and its per-epoch validation pass, not this script's evaluations (also
printed, as ``eval s``). At the end, the budget chosen on validation only, by the rule of
:func:`chosen_budget`: the fewest steps whose validation ratio, for every parameter, is no
higher than the upper end of the longest run's validation interval (no worse, within the
split's noise, than training to the end), i.e. the best validation ratio per minute. The test
columns take no part. ``--write`` saves the rows as JSON after every point, ``--figure`` draws
the ratios against steps (log x) with the SOP paper's 1.67 (0.015 / 0.009) dashed.

Cost: the demo's SOP takes ~36 s per epoch on 2 free cores, ~70 s with ``--threads 1`` on 2
cores shared with another job (221 s with 2 threads there: oversubscribed), so 3,072 steps (32
epochs) take 20 to 40 minutes, plus ~1 minute of evaluation per point. ``fit`` resumes an
interrupted run from WORK/run (the ``min`` column then counts this process only). Not a test.

Results of the demo's noiseless level: docs/sop_convergence.md.
"""

from __future__ import annotations

import argparse
import csv
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cosmo_sop import layout
from cosmo_sop.config import load_config
from cosmo_sop.models.sop import SumOfParts
from cosmo_sop.models.targets import LabelScaler
from cosmo_sop.models.trained import load_backbone
from cosmo_sop.statistics import CONFIDENCE
from cosmo_sop.storage import read_json, write_json
from cosmo_sop.training.comparison import mse_ratio_to_backbone, read_test_predictions
from cosmo_sop.training.data import PatchData, PatchDataset
from cosmo_sop.training.evaluation import evaluate
from cosmo_sop.training.loop import fit
from cosmo_sop.training.runs import (
    fit_options,
    predict_backbone,
    predict_sop,
    ratio_bootstrap_seed,
    untrained_sop,
)

#: The SOP paper's test MSE of SOP over its backbone's: 0.015 / 0.009.
PAPER_RATIO = 0.015 / 0.009
#: The demo's budget: its warm-up is kept at every length.
DEMO_EPOCHS = 2
OUTPUTS = ("Om", "s8")


def ratio_cell(entry: dict[str, Any]) -> str:
    """``ratio [low, high]`` of one output of :func:`mse_ratio_to_backbone`."""
    return f"{entry['ratio']:5.2f} [{entry['ci_low']:4.2f},{entry['ci_high']:5.2f}]"


def mean_ratio(ratios: dict[str, Any]) -> float:
    """The ratio averaged over the outputs."""
    return float(np.mean([ratios[o]["ratio"] for o in OUTPUTS]))


def chosen_budget(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The best validation ratio per minute: the row with the fewest steps whose validation
    ratio, for every output, is at most the upper end of the longest run's validation interval.

    The longest run always qualifies. Only validation enters: the test split must not choose
    the budget it is then reported on.
    """
    longest = max(rows, key=lambda row: row["steps"])["val"]
    for row in sorted(rows, key=lambda row: row["steps"]):
        if all(row["val"][o]["ratio"] <= longest[o]["ci_high"] for o in OUTPUTS):
            return row
    raise AssertionError("the longest run satisfies the rule")


def _header() -> str:
    val = " ".join(f"{'val ' + o:>20s}" for o in OUTPUTS)
    test = " ".join(f"{'test ' + o:>20s}" for o in OUTPUTS)
    mse = " ".join(f"{'MSE ' + o:>7s}" for o in OUTPUTS)
    return f"{'steps':>6s} {'min':>6s} {val} {test} {mse} {'best':>4s} {'eval s':>6s}"


def _line(row: dict[str, Any]) -> str:
    val = " ".join(f"{ratio_cell(row['val'][o]):>20s}" for o in OUTPUTS)
    test = " ".join(f"{ratio_cell(row['test'][o]):>20s}" for o in OUTPUTS)
    mse = " ".join(f"{row['test_mse_standardised'][o]:7.4f}" for o in OUTPUTS)
    best = "yes" if row["best_so_far"] else "no"
    return (
        f"{row['steps']:6d} {row['train_minutes']:6.1f} {val} {test} {mse} {best:>4s} "
        f"{row['eval_seconds']:6.0f}"
    )


class Checkpoints:
    """``fit``'s ``on_batch_end``: at the last batch of each chosen epoch, SOP's validation
    and test ratios to the backbone; times training apart from these evaluations."""

    def __init__(
        self,
        model: SumOfParts,
        epochs: list[int],
        steps_per_epoch: int,
        val: PatchDataset,
        test: PatchDataset,
        backbone_val: dict[str, Any],
        backbone_test: dict[str, np.ndarray],
        cosmology: np.ndarray,
        config: dict[str, Any],
        where: Path,
        write: Path | None,
        run_dir: Path,
    ) -> None:
        self.model, self.epochs, self.steps_per_epoch = model, set(epochs), steps_per_epoch
        self.val, self.test = val, test
        self.backbone = {"val": backbone_val, "test": backbone_test}
        self.cosmology, self.config, self.where, self.write = cosmology, config, where, write
        self.run_dir = run_dir
        self.rows: list[dict[str, Any]] = []
        self.start, self.eval_seconds = time.perf_counter(), 0.0

    def __call__(self, epoch: int, batch: int, loss: float) -> None:
        if epoch not in self.epochs or batch != self.steps_per_epoch - 1:
            return
        begin = time.perf_counter()
        train_minutes = (begin - self.start - self.eval_seconds) / 60
        was_training = self.model.training
        n_boot = self.config["sop"]["n_boot"]
        seed = ratio_bootstrap_seed(self.config)  # the demo's bootstrap
        batch_size = self.config["training"]["eval_batch_size"]
        row: dict[str, Any] = {"steps": epoch * self.steps_per_epoch, "epoch": epoch}
        with torch.no_grad():
            for split, data in (("val", self.val), ("test", self.test)):
                result = evaluate(self.model, data, predict_sop, batch_size=batch_size)
                row[split] = mse_ratio_to_backbone(
                    result,
                    self.backbone[split],
                    self.cosmology[result["sample"]],
                    n_boot,
                    seed,
                    self.where,
                )
                row[f"{split}_mse_standardised"] = result["mse_standardised"]
        self.model.train(was_training)
        self.eval_seconds += time.perf_counter() - begin
        row["train_minutes"] = train_minutes
        row["eval_seconds"] = time.perf_counter() - begin
        row["best_so_far"] = self._best_so_far(
            float(np.mean(list(row["val_mse_standardised"].values())))
        )
        # a point measured again (a rerun of a finished epoch) replaces its earlier row
        self.rows = [r for r in self.rows if r["steps"] != row["steps"]] + [row]
        self.rows.sort(key=lambda r: r["steps"])
        print(_line(row), flush=True)
        if self.write is not None:
            write_json(self.write, {"rows": self.rows, "paper_ratio": PAPER_RATIO})

    def _best_so_far(self, val_loss: float) -> bool:
        """Whether ``val_loss`` (``fit``'s criterion) beats the finished epochs' in metrics.csv."""
        try:
            with open(self.run_dir / layout.METRICS, newline="") as f:
                earlier = [float(r["val_loss"]) for r in csv.DictReader(f)]
        except FileNotFoundError:
            earlier = []
        return all(val_loss < loss for loss in earlier)


def backbone_validation(
    backbone: torch.nn.Module, val: PatchDataset, batch_size: int
) -> dict[str, Any]:
    """The backbone's validation predictions, in :func:`mse_ratio_to_backbone`'s form."""
    with torch.no_grad():
        result = evaluate(backbone, val, predict_backbone, batch_size=batch_size)
    return {k: np.asarray(result[k]) for k in ("sample", "predictions", "targets", "names")}


def draw(rows: list[dict[str, Any]], out_png: Path) -> None:
    """Validation and test ratios against steps, per output, with the paper's ratio dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from cosmo_sop.figures import save_figure

    fig, axes = plt.subplots(1, len(OUTPUTS), figsize=(9, 3.6), sharey=True)
    steps = np.array([row["steps"] for row in rows])
    for ax, output in zip(axes, OUTPUTS, strict=True):
        for split, shift, colour in (("val", 0.97, "C0"), ("test", 1.03, "C1")):
            r = np.array([row[split][output]["ratio"] for row in rows])
            lo = np.array([row[split][output]["ci_low"] for row in rows])
            hi = np.array([row[split][output]["ci_high"] for row in rows])
            ax.errorbar(
                steps * shift, r, yerr=[r - lo, hi - r], fmt="o-", capsize=3, color=colour,
                label="validation" if split == "val" else "test",
            )  # fmt: skip
        ax.axhline(PAPER_RATIO, ls="--", color="k", lw=1, label="SOP paper (0.015/0.009)")
        ax.axhline(1.0, ls=":", color="grey", lw=1)
        ax.set_xscale("log")
        ax.set_xticks(steps, [str(s) for s in steps])
        ax.minorticks_off()
        ax.set_xlabel("optimiser steps (32 maps)")
        ax.set_title(output)
    axes[0].set_ylabel("MSE SOP / MSE backbone")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, out_png)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("results", type=Path)
    parser.add_argument("--level", default="noiseless")
    parser.add_argument("--steps", type=int, nargs="+", default=[192, 384, 768, 1536, 3072])
    parser.add_argument("--work", type=Path, default=Path("/work/sop_conv"))
    parser.add_argument("--write", type=Path, help="JSON of the rows (default: WORK/rows.json)")
    parser.add_argument("--figure", type=Path, help="PNG (default: WORK/sop_convergence.png)")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    write = args.write or args.work / "rows.json"
    figure = args.figure or args.work / "sop_convergence.png"

    config = load_config(Path(__file__).resolve().parents[1] / "config" / "config.yaml")
    config["training"]["progress"] = False
    sop = config["sop"]
    patches = layout.level_patches(args.results, args.level)
    backbone_dir = layout.model_dir(args.results, args.level, "backbone")
    backbone, sidecar = load_backbone(backbone_dir)
    data = PatchData(patches)
    scaler = LabelScaler.from_state_dict(sidecar["label_scaler"])
    budget = config["training"]["memory_budget_gib"]
    train = data.dataset(
        "train", scaler, budget, max_samples=sop["max_train_maps"], seed=config["seed"]
    )
    val, test = data.dataset("val", scaler, budget), data.dataset("test", scaler, budget)
    steps_per_epoch = len(train) // sop["training"]["batch_size"]
    epochs = sorted({max(1, math.ceil(s / steps_per_epoch)) for s in args.steps})
    total = epochs[-1]

    options = fit_options(config, {**sop["training"], "mask_probability": 0.0})
    options["warmup_fraction"] = options["warmup_fraction"] * DEMO_EPOCHS / total
    options["epochs"], options["patience"] = total, total
    options["threads"] = args.threads
    input_shape = tuple(data.ds.sizes[d] for d in ("bin", "y", "x"))
    model = untrained_sop(backbone, input_shape, config)
    batch_size = config["training"]["eval_batch_size"]
    backbone_val = backbone_validation(backbone, val, batch_size)
    hook = Checkpoints(
        model,
        epochs,
        steps_per_epoch,
        val,
        test,
        backbone_val,
        read_test_predictions(backbone_dir / layout.TEST_PREDICTIONS),
        data.ds["cosmology"].values,
        config,
        backbone_dir,
        write,
        args.work / "run",
    )
    if write.exists():  # a resumed run keeps the points measured before it was interrupted
        hook.rows = read_json(write)["rows"]
    print(
        f"SOP on {args.level}: {len(train)} training maps, {steps_per_epoch} steps per epoch, "
        f"epochs {epochs}, warm-up {options['warmup_fraction'] * total * steps_per_epoch:.1f} "
        f"steps; {len(val)} validation, {len(test)} test maps; "
        f"{round(100 * CONFIDENCE)}% cosmology-bootstrap intervals, "
        f"{torch.get_num_threads()} threads",
        flush=True,
    )
    print(_header(), flush=True)
    start = time.perf_counter()
    fit(
        model,
        train,
        val,
        predict_sop,
        options,
        args.work / "run",
        model_config={"kind": "sop", "backbone": backbone.config, "sop": model.config},
        on_batch_end=hook,
        restart_stale=True,
    )
    minutes = (time.perf_counter() - start) / 60
    rows = hook.rows
    chosen = chosen_budget(rows)
    longest = max(rows, key=lambda row: row["steps"])
    print(
        f"chosen on validation only: {chosen['steps']} steps ({chosen['train_minutes']:.1f} "
        f"training minutes; validation ratio Om {chosen['val']['Om']['ratio']:.2f}, "
        f"s8 {chosen['val']['s8']['ratio']:.2f}, mean {mean_ratio(chosen['val']):.2f}), the "
        f"fewest steps whose validation ratios are within the upper ends of the "
        f"{longest['steps']}-step run's intervals (Om {longest['val']['Om']['ci_high']:.2f}, "
        f"s8 {longest['val']['s8']['ci_high']:.2f}); the test columns took no part"
    )
    print(f"wall time {minutes:.1f} minutes (training and evaluations)")
    write_json(
        write,
        {
            "rows": rows,
            "paper_ratio": PAPER_RATIO,
            "chosen_steps": chosen["steps"],
            "rule": chosen_budget.__doc__,
            "wall_minutes": minutes,
            "training_options": options,
        },
    )
    draw(rows, figure)
    print(f"wrote {write} and {figure}")


if __name__ == "__main__":
    main()
