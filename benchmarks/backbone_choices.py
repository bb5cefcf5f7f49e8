"""A better CNN, chosen on validation only: the demo's backbone against one change at a time.

    python benchmarks/backbone_choices.py RESULTS [--level noiseless] [--work DIR]
        [--variants demo epochs_32 ...] [--write JSON]

Trains on the level's patch store of a finished demo (RESULTS/<level>/patches.zarr) the demo's
CNN (config/config.yaml) and variants that each change one setting of it (:data:`VARIANTS`:
width, depth and kernel, BatchNorm, epochs, learning rate, batch size, the loss (mean absolute
error instead of squared), the random masking that prepares the CNN for SOP's partial maps),
through the workflow's own entry point (:func:`cosmo_sop.training.train_backbone`, so early
stopping on the validation split and the seeds are the workflow's). Each trained CNN is scored on the **validation** split:

- standardised MSE per parameter on whole maps;
- standardised MSE on single 20 % groups: one random group of SOP's patch tokens per map
  (``sop.keep_fraction`` of the config, :func:`~cosmo_sop.training.floor.random_token_sets`),
  the same groups for every variant: what the backbone is asked inside SOP.

Every variant's MSE over the demo's CNN's comes with a paired interval from a bootstrap over the
validation cosmologies (both score the same maps), at confidence 1 - 0.05 / k for k variants
(Bonferroni over the variants). A variant *helps* where the interval of the mean of its two
parameters' ratios lies below 1 on whole maps and its single-group ratio's upper end is below
1.1 (it must not unlearn the partial maps SOP feeds it). The choice is the helping variant with
the lowest whole-map ratio; only then is the test split read, for the chosen variant and the
demo's CNN (paired ratio over the test cosmologies). Nothing else looks at the test split.

Each variant trains in its own folder under ``--work`` and is not trained again when its
folder holds a finished run of the same config. Cost on 2 free cores: ~40 s for an 8-epoch CNN on
the demo's level (4,992 training maps), ~80 s for the demo's 16 epochs, several times that for
the wider and deeper variants; 15 to 25 minutes per level. Not a test.

Results of the demo's two levels: docs/backbone_choices.md.
"""

from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from snakemake.utils import update_config

from cosmo_sop import layout
from cosmo_sop.config import load_config
from cosmo_sop.models.targets import LabelScaler
from cosmo_sop.models.trained import load_backbone
from cosmo_sop.models.weights import load_sidecar
from cosmo_sop.statistics import bootstrap_ratio_of_means
from cosmo_sop.storage import read_json, write_json
from cosmo_sop.training import PatchData, train_backbone
from cosmo_sop.training.batches import EpochBatchSampler, collate_batch
from cosmo_sop.training.comparison import read_test_predictions
from cosmo_sop.training.floor import present_tokens, random_token_sets
from cosmo_sop.training.loop import derived_seed
from cosmo_sop.training.runs import untrained_sop

ROOT = Path(__file__).resolve().parents[1]

#: One change each against config/config.yaml (nested config keys). docs/backbone_choices.md
#: was measured when the demo trained 8 epochs, with a variant of 16 (now the demo's).
VARIANTS: dict[str, dict[str, Any]] = {
    "demo": {},
    "epochs_8": {"training": {"epochs": 8}},
    "epochs_32": {"training": {"epochs": 32}},
    "wider": {"backbone": {"widths": [32, 64, 96]}},
    "deeper_k3": {"backbone": {"widths": [16, 32, 48, 64], "kernel_size": 3}},
    "batchnorm": {"backbone": {"batchnorm": True}},
    "lr_3e-3": {"training": {"lr": 0.003}},
    "batch_32": {"training": {"batch_size": 32}},
    "no_masking": {"training": {"mask_probability": 0.0}},
    "masked_always": {"training": {"mask_probability": 1.0}},
    "mae": {"training": {"loss": "mae"}},
}
N_BOOT = 2000
#: Seed purpose of the random single groups (the same for every variant).
GROUP_PURPOSE = 0x5163


def variant_config(base: dict[str, Any], change: dict[str, Any]) -> dict[str, Any]:
    config = copy.deepcopy(base)
    update_config(config, copy.deepcopy(change))
    config["training"]["progress"] = False
    return config


def trained(patches: Path, run_dir: Path, config: dict[str, Any]) -> float:
    """Train (or reuse) one variant; the minutes it took (0 when reused)."""
    finished = run_dir / layout.TEST_METRICS
    stamp = run_dir / "variant_config.json"
    if finished.is_file() and stamp.is_file() and read_json(stamp) == config:
        return 0.0
    start = time.perf_counter()
    train_backbone(patches, run_dir, config, restart_stale=True)
    write_json(stamp, config)
    return (time.perf_counter() - start) / 60


@torch.inference_mode()
def validation_errors(
    run_dir: Path, data: PatchData, config: dict[str, Any]
) -> dict[str, np.ndarray]:
    """Squared standardised errors (maps, outputs) on the validation split: ``whole`` maps and
    ``single_group`` (one random group of SOP's tokens per map, seeded: the same groups for
    every variant)."""
    backbone, sidecar = load_backbone(run_dir)
    backbone.eval()
    scaler = LabelScaler.from_state_dict(sidecar["label_scaler"])
    dataset = data.dataset("val", scaler, config["training"]["memory_budget_gib"])
    input_shape = tuple(data.ds.sizes[d] for d in ("bin", "y", "x"))
    sop = untrained_sop(backbone, input_shape, config).eval()
    generator = torch.Generator().manual_seed(derived_seed(config["seed"], GROUP_PURPOSE))
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_sampler=EpochBatchSampler(len(dataset), 64, shuffle=False),
        collate_fn=collate_batch,
    )
    whole, single = [], []
    for batch in loader:
        kappa, target = batch["kappa"], batch["target"]
        whole.append((backbone(kappa) - target) ** 2)
        token_map = sop.token_map(kappa)
        tokens = present_tokens(token_map, int(token_map.max()) + 1)
        group = random_token_sets(tokens, 1, sop.config["keep_fraction"], generator)
        partial, _ = sop.parts_of(kappa, group)
        single.append((partial[:, 0] - target) ** 2)
    return {"whole": torch.cat(whole).numpy(), "single_group": torch.cat(single).numpy()}


def paired_ratio(
    variant: np.ndarray, demo: np.ndarray, cosmologies: np.ndarray, confidence: float
) -> dict[str, list[float]]:
    """Per output and for the mean of the outputs: MSE(variant) / MSE(demo) with its paired
    cosmology-bootstrap interval."""
    numerator = np.column_stack([variant, variant.mean(1)])
    denominator = np.column_stack([demo, demo.mean(1)])
    interval = bootstrap_ratio_of_means(
        numerator, denominator, cosmologies, N_BOOT, seed=1, confidence=confidence
    )
    return {
        "ratio": interval.estimate.tolist(),
        "ci_low": interval.low.tolist(),
        "ci_high": interval.high.tolist(),
    }


def helps(row: dict[str, Any]) -> bool:
    """Better on whole maps (mean of the outputs, interval below 1) without losing the partial
    maps (single-group ratio's upper end below 1.1)."""
    return row["whole"]["ci_high"][-1] < 1.0 and row["single_group"]["ci_high"][-1] < 1.1


def _cells(entry: dict[str, list[float]]) -> str:
    return "  ".join(
        f"{r:.2f} [{lo:.2f}, {hi:.2f}]"
        for r, lo, hi in zip(entry["ratio"], entry["ci_low"], entry["ci_high"], strict=True)
    )


def chosen_over_demo_on_test(work: Path, chosen: str, data: PatchData) -> dict[str, list[float]]:
    """The chosen variant's test MSE over the demo CNN's (standardised), paired over the test
    cosmologies."""
    runs = [
        read_test_predictions(work / name / layout.TEST_PREDICTIONS) for name in (chosen, "demo")
    ]
    if not np.array_equal(runs[0]["sample"], runs[1]["sample"]):
        raise SystemExit("the two runs tested other maps")
    sidecar = load_sidecar(work / "demo" / layout.WEIGHTS)
    scaler = LabelScaler.from_state_dict(sidecar["label_scaler"])
    squared = [
        (scaler.transform(run["predictions"]) - scaler.transform(run["targets"])) ** 2
        for run in runs
    ]
    cosmologies = data.ds["cosmology"].values[runs[0]["sample"]]
    return paired_ratio(*squared, cosmologies, 0.95)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results", type=Path, help="a finished demo's results folder")
    parser.add_argument("--level", default="noiseless")
    parser.add_argument("--work", type=Path, default=Path("results_backbone_choices"))
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--write", type=Path, help="JSON of every number")
    args = parser.parse_args()
    names = ["demo", *(name for name in args.variants if name != "demo")]

    base = load_config(ROOT / "config" / "config.yaml")
    patches = layout.level_patches(args.results, args.level)
    data = PatchData(patches)
    val = data.indices("val")
    cosmologies = data.ds["cosmology"].values[val]
    confidence = 1 - 0.05 / max(1, len(names) - 1)
    work = args.work / args.level
    print(
        f"{args.level}: {val.size} validation maps of {np.unique(cosmologies).size} cosmologies;"
        f" intervals at {confidence:.4f} (Bonferroni over {len(names) - 1} variants)"
    )
    print("variant | min | whole maps: ratio Om, s8, mean | single 20% group: ratio Om, s8, mean")
    errors, rows = {}, {}
    for name in names:
        config = variant_config(base, VARIANTS[name])
        minutes = trained(patches, work / name, config)
        errors[name] = validation_errors(work / name, data, config)
        mse = {kind: errors[name][kind].mean(0).tolist() for kind in errors[name]}
        rows[name] = {"change": VARIANTS[name], "minutes": minutes, "val_mse": mse}
        if name != "demo":
            for kind in ("whole", "single_group"):
                rows[name][kind] = paired_ratio(
                    errors[name][kind], errors["demo"][kind], cosmologies, confidence
                )
            print(
                f"{name} | {minutes:.1f} | {_cells(rows[name]['whole'])} |"
                f" {_cells(rows[name]['single_group'])}"
            )
        else:
            print(
                f"demo | {minutes:.1f} | val MSE whole {mse['whole']}, single {mse['single_group']}"
            )
    helping = [name for name in names[1:] if helps(rows[name])]
    chosen = min(helping, key=lambda name: rows[name]["whole"]["ratio"][-1], default="demo")
    result = {"level": args.level, "confidence": confidence, "variants": rows, "chosen": chosen}
    print(f"helping on validation: {helping or 'none'}; chosen: {chosen}")
    if chosen != "demo":
        result["test_ratio"] = chosen_over_demo_on_test(work, chosen, data)
        print(f"test MSE {chosen} / demo: {_cells(result['test_ratio'])}")
    if args.write:
        write_json(args.write, result)


if __name__ == "__main__":
    main()
