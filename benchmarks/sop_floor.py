"""The floor under SOP, and lever (a) of issue 8: does a backbone trained on SOP-sized masks
predict better from SOP's partial maps?

    python benchmarks/sop_floor.py RESULTS [--level noiseless] [--epochs 8]

For each masking of the backbone's training maps (the config's default: half the maps with a
random 20-100 % of the 14 x 14 cells kept; half with exactly tau = 20 % kept; three quarters
with exactly 20 %), trains a backbone on the level's patch store in a temporary folder and
prints its MSE (standardised) on the full maps, on one random tau-group and on the uniform
average over m random tau-groups (:func:`cosmo_sop.training.random_group_floor`), on the
validation split and on the test split, one line each. Then the choice (:func:`choice`): the
lowest validation MSE summed over Om and s8 and over the three columns, since the backbone
serves the full maps (its own predictions, the baselines') and SOP's partial maps alike. The
test lines are shown, never used; validation also stopped every training, alike for every
masking. Slow (one backbone training per row); not a test.

Measured on the demo's noiseless level (8 epochs, 2 shared cores), Om / s8, test split only
(the run that chose on it, before the validation lines were printed; not yet repeated):

    masking                       full map       one group      uniform average of 20
    p=0.5, keep U[0.2, 1]         0.097 / 0.060  0.423 / 0.459  0.375 / 0.445
    p=0.5, keep exactly 0.2       0.120 / 0.076  0.516 / 0.387  0.461 / 0.349
    p=0.75, keep exactly 0.2      0.987 / 0.459  (did not learn in 8 epochs)

Masks sized exactly like SOP's groups cost the full-map accuracy and did not lower the floor
for Om on the test split, so the default keeps the broad masking; the validation lines of a
rerun are what that choice should rest on.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from cosmo_sop import layout
from cosmo_sop.config import load_config
from cosmo_sop.models import SumOfParts
from cosmo_sop.models.trained import load_backbone
from cosmo_sop.training import (
    PatchData,
    evaluate,
    predict_backbone,
    random_group_floor,
    select_device,
    sop_model_settings,
    train_backbone,
)
from cosmo_sop.training.comparison import choice_line

MASKINGS = {
    "p=0.5, keep U[0.2, 1]": {},
    "p=0.5, keep exactly 0.2": {"mask_min_keep": 0.2, "mask_max_keep": 0.2},
    "p=0.75, keep exactly 0.2": {
        "mask_probability": 0.75,
        "mask_min_keep": 0.2,
        "mask_max_keep": 0.2,
    },
}
#: The splits printed, validation first: the choice reads only the first.
SPLITS = ("val", "test")
#: The columns: the backbone on the full maps, on one random group, on the average of m.
COLUMNS = ("full map", "one group", "uniform average")
#: What the choice minimises.
CRITERION = "val MSE summed over Om, s8 and the three columns"
#: Standardised MSE per split, column and output: ``{split: {column: {output: MSE}}}``.
Scores = dict[str, dict[str, dict[str, float]]]


def scores_of(run_dir: Path, patches: Path, config: dict) -> Scores:
    """The backbone of ``run_dir`` on the full maps and on random tau-groups of SOP's tokens,
    on every split of :data:`SPLITS`."""
    backbone, _ = load_backbone(run_dir)
    data = PatchData(patches)
    settings = sop_model_settings(config["sop"])
    blocks = settings.pop("encoder_blocks")
    settings["tokens"] = "patches"  # random groups of grid cells, as the masks above
    shape = tuple(data.ds.sizes[d] for d in ("bin", "y", "x"))
    # One device for the backbone and the SOP model around it (evaluate moves the backbone).
    device = str(select_device(config["training"]["device"]))
    model = SumOfParts.from_backbone(backbone, shape, blocks, **settings).to(device)
    batch_size = config["training"]["eval_batch_size"]
    scores: Scores = {}
    for split in SPLITS:
        maps = data.dataset(split, data.scaler(), config["training"]["memory_budget_gib"])
        full = evaluate(backbone, maps, predict_backbone, batch_size=batch_size, device=device)
        floor = random_group_floor(model, maps, batch_size, seed=0)
        scores[split] = {
            "full map": full["mse_standardised"],
            "one group": floor["single_group"],
            "uniform average": floor["uniform_average"],
        }
    return scores


def validation_score(scores: Scores) -> float:
    """The criterion of one masking: its validation MSE summed over columns and outputs."""
    return sum(sum(cell.values()) for cell in scores["val"].values())


def choice(results: dict[str, Scores]) -> str:
    """The line printed under the table: the masking with the lowest validation score; the
    test scores take no part."""
    return choice_line({name: validation_score(s) for name, s in results.items()}, CRITERION)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("results", type=Path)
    parser.add_argument("--level", default="noiseless")
    parser.add_argument("--epochs", type=int, default=8)
    args = parser.parse_args()
    config = load_config(Path(__file__).resolve().parents[1] / "config" / "config.yaml")
    config["training"].update(epochs=args.epochs, progress=False)
    patches = layout.level_patches(args.results, args.level)
    header = f"{'masking':28s} {'split':5s} " + " ".join(f"{c:>16s}" for c in COLUMNS)
    print(header + "  (MSE, Om / s8)")
    results: dict[str, Scores] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, masking in MASKINGS.items():
            run = Path(tmp) / name.replace(" ", "_")
            config_here = {**config, "training": {**config["training"], **masking}}
            train_backbone(patches, run, config_here)
            results[name] = scores_of(run, patches, config_here)
            for split, cells in results[name].items():
                row = " ".join(f"{cells[c]['Om']:7.3f} / {cells[c]['s8']:6.3f}" for c in COLUMNS)
                print(f"{name:28s} {split:5s} {row}", flush=True)
    print(choice(results))


if __name__ == "__main__":
    main()
