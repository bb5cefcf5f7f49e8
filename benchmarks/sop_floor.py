"""The floor under SOP, and lever (a) of issue 8: does a backbone trained on SOP-sized masks
predict better from SOP's partial maps?

    python benchmarks/sop_floor.py RESULTS [--level noiseless] [--epochs 8]

For each masking of the backbone's training maps (the config's default: half the maps with a
random 20-100 % of the 14 x 14 cells kept; half with exactly tau = 20 % kept; three quarters
with exactly 20 %), trains a backbone on the level's patch store in a temporary folder and
prints its test MSE (standardised) on the full maps, on one random tau-group and on the uniform
average over m random tau-groups (:func:`cosmo_sop.training.random_group_floor`). Slow (one
backbone training per row); not a test.

Measured on the demo's noiseless level (8 epochs, 2 shared cores), Om / s8:

    masking                       full map       one group      uniform average of 20
    p=0.5, keep U[0.2, 1]         0.097 / 0.060  0.423 / 0.459  0.375 / 0.445
    p=0.5, keep exactly 0.2       0.120 / 0.076  0.516 / 0.387  0.461 / 0.349
    p=0.75, keep exactly 0.2      0.987 / 0.459  (did not learn in 8 epochs)

Masks sized exactly like SOP's groups cost the full-map accuracy and do not lower the floor for
Om, so the default keeps the broad masking.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from cosmo_sop import layout
from cosmo_sop.config import load_config
from cosmo_sop.models import SumOfParts
from cosmo_sop.models.trained import load_backbone
from cosmo_sop.training import PatchData, random_group_floor, sop_model_settings, train_backbone

MASKINGS = {
    "p=0.5, keep U[0.2, 1]": {},
    "p=0.5, keep exactly 0.2": {"mask_min_keep": 0.2, "mask_max_keep": 0.2},
    "p=0.75, keep exactly 0.2": {
        "mask_probability": 0.75,
        "mask_min_keep": 0.2,
        "mask_max_keep": 0.2,
    },
}


def floor_of(run_dir: Path, patches: Path, config: dict) -> dict:
    backbone, _ = load_backbone(run_dir)
    data = PatchData(patches)
    test = data.dataset("test", data.scaler(), config["training"]["memory_budget_gib"])
    settings = sop_model_settings(config["sop"])
    blocks = settings.pop("encoder_blocks")
    settings["tokens"] = "patches"  # random groups of grid cells, as the masks above
    shape = tuple(data.ds.sizes[d] for d in ("bin", "y", "x"))
    model = SumOfParts.from_backbone(backbone, shape, blocks, **settings)
    return random_group_floor(model, test, config["training"]["eval_batch_size"], seed=0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("results", type=Path)
    parser.add_argument("--level", default="noiseless")
    parser.add_argument("--epochs", type=int, default=8)
    args = parser.parse_args()
    config = load_config(Path(__file__).resolve().parents[1] / "config" / "config.yaml")
    config["training"].update(epochs=args.epochs, progress=False)
    patches = layout.level_patches(args.results, args.level)
    header = f"{'masking':28s} {'full map':>16s} {'one group':>16s} {'uniform average':>16s}"
    print(header + "  (test MSE, Om / s8)")
    with tempfile.TemporaryDirectory() as tmp:
        for name, masking in MASKINGS.items():
            run = Path(tmp) / name.replace(" ", "_")
            config_here = {**config, "training": {**config["training"], **masking}}
            full = train_backbone(patches, run, config_here)["mse_standardised"]
            floor = floor_of(run, patches, config_here)
            cells = [full, floor["single_group"], floor["uniform_average"]]
            print(f"{name:28s} " + " ".join(f"{c['Om']:7.3f} / {c['s8']:6.3f}" for c in cells))


if __name__ == "__main__":
    main()
