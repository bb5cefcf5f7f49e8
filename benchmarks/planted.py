"""Power and calibration of the void/cluster findings, on the planted-signal mock.

    python benchmarks/planted.py                         # 5 seeds, signal on and off
    python benchmarks/planted.py --seeds 1 --work /tmp/planted   # one seed of each, to look at
    python benchmarks/planted.py --write cosmo_sop/report/planted_calibration.json

Runs the workflow of ``config/planted.yaml`` (the planted mock, its CNN, SOP and structures
step, nothing else) for every seed, once with the planted signal (``mock.planted.signal:
structures``: voids carry Omega_m, clusters sigma_8, as the SOP paper claims) and once without
(``smooth``: both parameters act through smooth fields, voids and clusters carry nothing), each
seed a new mock, new training and new bootstrap draws. Prints, per class and hypothesis of
:mod:`cosmo_sop.structures.findings`, how often a finding is called: with the signal on, that is
the power (findings are one-sided, in the planted direction); with it off, the false-positive
rate, which should not exceed the nominal 5 % beyond what so few seeds resolve (the intervals
are Clopper-Pearson, 95 %). Beside them, the two-sided verdicts of the ratios alone (agrees,
disagrees, inconclusive), which show an effect on either side of 1. Also prints the backbone's standardised test MSE per output (1 is
the prior's variance): a control the CNN cannot learn tests nothing. ``--write`` saves the
table as JSON, which the report shows beside a run's verdicts. Slow (10 workflow runs, about
8 minutes each on 2 cores). Not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import yaml
from scipy.stats import binomtest
from snakemake.utils import update_config

from cosmo_sop import layout
from cosmo_sop.report.inputs import read_test_metrics
from cosmo_sop.storage import read_json
from cosmo_sop.structures.findings import HYPOTHESES

ROOT = Path(__file__).resolve().parents[1]
LEVEL = "noiseless"
SIGNALS = ("structures", "smooth")


def run_config(planted: Path, work: Path, signal: str, seed: int) -> dict:
    """config/config.yaml with ``planted`` and this run's seed, signal and folders on top."""
    # merged as Snakemake merges --configfile files over the Snakefile's configfile
    config = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    update_config(config, yaml.safe_load(planted.read_text()))
    name = f"{signal}_seed{seed}"
    update_config(
        config,
        {
            "seed": seed,
            "results": str(work / name / "results"),
            "mock": {"root": str(work / name / "mock"), "planted": {"signal": signal}},
        },
    )
    return config


def run_workflow(config: dict, cores: int) -> Path:
    """The planted workflow up to the structures step of :data:`LEVEL`, in its own folder (its
    own Snakemake lock and metadata); returns its results."""
    results = Path(config["results"])
    configfile = results.parent / "config.yaml"
    configfile.parent.mkdir(parents=True, exist_ok=True)
    configfile.write_text(yaml.safe_dump(config))
    targets = [
        str(layout.science_dir(results, LEVEL) / layout.VERDICTS),
        str(layout.model_dir(results, LEVEL, "backbone") / layout.TEST_METRICS),
    ]
    command = [
        sys.executable, "-m", "snakemake", *targets, "--snakefile", str(ROOT / "Snakefile"),
        "--directory", str(results.parent), "--configfile", str(configfile),
        "--cores", str(cores),
        "--quiet", "rules",
    ]  # fmt: skip
    environment = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    log = results.parent / "snakemake.log"
    with log.open("w") as out:
        done = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, env=environment)
    if done.returncode != 0:
        sys.exit(f"{configfile}: the workflow failed, see {log}")
    return results


def tally(runs: dict[str, list[Path]]) -> list[dict[str, Any]]:
    """Per signal, class and hypothesis: findings called over the runs, with a 95 %
    Clopper-Pearson interval of the rate."""
    rows = []
    for signal, folders in runs.items():
        records = [
            read_json(layout.science_dir(r, LEVEL) / layout.VERDICTS)["verdicts"] for r in folders
        ]
        for i, first in enumerate(records[0]):
            for hypothesis in HYPOTHESES:
                tested = [run[i]["hypotheses"][hypothesis] for run in records]
                called = sum(bool(h.get("finding")) for h in tested)
                n = len(tested)
                interval = binomtest(called, n).proportion_ci(0.95, method="exact")
                rows.append(
                    {
                        "signal": signal,
                        "definition": first["definition"],
                        "kind": first["kind"],
                        "hypothesis": hypothesis,
                        "findings": called,
                        "runs": n,
                        "untested": sum("untested" in h for h in tested),
                        "rate": called / n,
                        "ci_low": interval.low,
                        "ci_high": interval.high,
                        "n_contributing": [run[i]["n_contributing"] for run in records],
                        # the two-sided verdict of the ratio alone, on either side of 1
                        "outcomes": dict(Counter(run[i]["outcome"] for run in records)),
                    }
                )
    return rows


def learnt(runs: dict[str, list[Path]]) -> dict[str, dict[str, list[float]]]:
    """Per signal and output, the backbone's standardised test MSE of every run."""
    out: dict[str, dict[str, list[float]]] = {}
    for signal, folders in runs.items():
        for results in folders:
            metrics = read_test_metrics(layout.level_dir(results, LEVEL))
            backbone = next(iter(metrics.values()))["mse_standardised"]
            for output, value in backbone.items():
                out.setdefault(signal, {}).setdefault(output, []).append(float(value))
    return out


def print_table(rows: list[dict[str, Any]], mse: dict[str, dict[str, list[float]]]) -> None:
    print(f"{'signal':<11}{'class':<17}{'hypothesis':<11}{'findings':>9}  rate [95% CI]")
    for row in rows:
        print(
            f"{row['signal']:<11}{row['definition']:<17}{row['hypothesis']:<11}"
            f"{row['findings']:>4} of {row['runs']:<2}  {row['rate']:.2f} "
            f"[{row['ci_low']:.2f}, {row['ci_high']:.2f}]"
            + (f"  ({row['untested']} untested)" if row["untested"] else "")
            + f"  verdicts: {row['outcomes']}"
        )
    for signal, outputs in mse.items():
        text = ", ".join(f"{o} {min(v):.3f}–{max(v):.3f}" for o, v in outputs.items())
        print(f"backbone standardised test MSE, signal {signal}: {text}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seeds", type=int, default=5, help="seeds 1..N of each signal")
    parser.add_argument("--config", type=Path, default=ROOT / "config" / "planted.yaml")
    parser.add_argument("--work", type=Path, default=ROOT / "results_planted_calibration")
    parser.add_argument("--cores", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--write", type=Path, help="save the table as JSON here")
    args = parser.parse_args()

    runs: dict[str, list[Path]] = {signal: [] for signal in SIGNALS}
    for seed in range(1, args.seeds + 1):
        for signal in SIGNALS:
            start = time.perf_counter()
            config = run_config(args.config, args.work.resolve(), signal, seed)
            runs[signal].append(run_workflow(config, args.cores))
            print(f"signal {signal}, seed {seed}: {time.perf_counter() - start:.0f} s", flush=True)
    rows, mse = tally(runs), learnt(runs)
    print_table(rows, mse)
    if args.write:
        args.write.write_text(
            json.dumps(
                {
                    "config": str(args.config.resolve().relative_to(ROOT)),
                    "seeds": args.seeds,
                    "level": LEVEL,
                    "rows": rows,
                    "backbone_mse_standardised": mse,
                },
                indent=1,
            )
            + "\n"
        )


if __name__ == "__main__":
    main()
