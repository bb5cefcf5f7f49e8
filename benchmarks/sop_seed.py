"""How far the void/cluster weight ratios move when SOP is trained with another seed.

    python benchmarks/sop_seed.py --results results --level noiseless --seed 2
    python benchmarks/sop_seed.py --results results --level noiseless --seed 2 \\
        --max-train-maps 64 --epochs 1 --max-maps 64      # a quick check that it runs

Retrains SOP around the level's trained backbone with config seed ``--seed`` (everything else
as in ``--config``), explains the test maps with it, weighs the structure classes with the
same bootstrap (no nulls), and prints, per definition, the ratio and interval of the run's SOP
(its ``verdicts.json``) and of the reseeded SOP, and how far the ratio moved in units of the
run's interval half-width. Nothing is written into the results tree: the new model and its
outputs go to a temporary folder (or ``--work``). Slow (a whole SOP training). Not a test.
"""

from __future__ import annotations

import argparse
import copy
import tempfile
import time
from pathlib import Path

from cosmo_sop import layout
from cosmo_sop.config import load_config, validate_config
from cosmo_sop.explain import explain_split
from cosmo_sop.storage import read_json
from cosmo_sop.structures.run import run as structures_run
from cosmo_sop.training.runs import train_sop

ROOT = Path(__file__).resolve().parents[1]


def _config(args: argparse.Namespace) -> dict:
    config = copy.deepcopy(load_config(args.config))
    config["seed"] = int(args.seed)
    config["structures"]["nulls"] = []
    if args.max_train_maps is not None:
        config["sop"]["max_train_maps"] = args.max_train_maps
    if args.epochs is not None:
        config["sop"]["training"]["epochs"] = args.epochs
    return validate_config(config)


def _moved(before: dict, after: dict) -> str:
    ratio, low, high = (before.get(k) for k in ("ratio", "ci_low", "ci_high"))
    new = after.get("ratio")
    if None in (ratio, low, high, new) or high == low:
        return "–"
    return f"{(new - ratio) / ((high - low) / 2):+.2f}"


def _text(record: dict) -> str:
    if record.get("ratio") is None:
        return "–"
    low, high = record.get("ci_low"), record.get("ci_high")
    return f"{record['ratio']:.3g} [{low or float('nan'):.3g}, {high or float('inf'):.3g}]"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--results", type=Path, required=True, help="a finished run's results")
    parser.add_argument("--level", default="noiseless")
    parser.add_argument("--seed", type=int, default=2, help="the second training seed")
    parser.add_argument("--config", type=Path, default=ROOT / "config" / "config.yaml")
    parser.add_argument("--max-train-maps", type=int, help="override sop.max_train_maps")
    parser.add_argument("--epochs", type=int, help="override sop.training.epochs")
    parser.add_argument("--max-maps", type=int, help="explain only this many test maps")
    parser.add_argument("--work", type=Path, help="folder for the new model (default: temp)")
    parser.add_argument(
        "--verdicts", type=Path, help="the first seed's verdicts.json (default: the run's)"
    )
    args = parser.parse_args()

    config = _config(args)
    level = args.level
    patches = layout.level_patches(args.results, level)
    segments = layout.segments(args.results, level)
    segments = segments if segments.exists() else None
    backbone = layout.model_dir(args.results, level, "backbone")
    before = read_json(args.verdicts or layout.science_dir(args.results, level) / layout.VERDICTS)
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        start = time.perf_counter()
        train_sop(patches, segments, backbone, work / "sop", config)
        trained = time.perf_counter() - start
        explain = {**config["explain"], "max_maps": args.max_maps}
        store = explain_split(
            work / "sop", patches, work / "explanations.zarr", segments, **explain
        )
        result = structures_run(
            config,
            explanations=store,
            patches=patches,
            out_dir=work / "science",
            segments=segments,
            n_examples=0,
        )
    print(f"SOP retrained with seed {args.seed} in {trained:.0f} s; {result['n_maps']} maps")
    old = {r["definition"]: r for r in (before or {}).get("verdicts", [])}
    print(f"{'definition':<18}{'run ratio [CI]':>28}{'seed ' + str(args.seed):>28}{'moved':>8}")
    for record in result["verdicts"]:
        name = record["definition"]
        run = old.get(name, {})

        print(f"{name:<18}{_text(run):>28}{_text(record):>28}{_moved(run, record):>8}")
    print("moved: (new ratio - run ratio) / half-width of the run's interval")


if __name__ == "__main__":
    main()
