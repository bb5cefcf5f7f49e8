"""analysis/void_cluster_weights.ipynb runs top to bottom on a tiny run with planted voids and
clusters, and finds what was planted."""

from __future__ import annotations

import ast
import json
import re
import sys
from pathlib import Path

import ipykernel  # noqa: F401  (the test extra: a kernel must be installable here)
import nbclient
import nbformat
import numpy as np
import xarray as xr
from fixtures.stores import write_patch_store

from cosmo_sop.storage import write_zarr
from cosmo_sop.structures import (
    DEFAULT_DEFINITIONS,
    OUTCOMES,
    classify,
    group_statistics,
    parse_definitions,
    sigma_map,
    verdicts,
    weight_table,
)

NOTEBOOK = Path(__file__).resolve().parents[1] / "analysis" / "void_cluster_weights.ipynb"
KERNEL = "cosmo-sop-test"
SIZE, BINS, GROUPS = 16, 2, 6
N_COSMOLOGIES, PER_COSMOLOGY = 10, 3  # explained maps: 30 in 10 blocks, a verdict's fewest
#: Weights planted per group: cluster, void, three neutral strips, one invalid (empty) group.
WEIGHTS = {"Om": [0.10, 0.60, 0.10, 0.10, 0.10, 0.0], "s8": [0.60, 0.10, 0.10, 0.10, 0.10, 0.0]}


def _planted_maps(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """kappa (n, BINS, SIZE, SIZE) with a peak near (4, 4) and a trough over [9:15, 9:15], and
    the group masks (n, GROUPS, SIZE, SIZE): the peak's core, the trough, neutral strips."""
    y, x = np.mgrid[:SIZE, :SIZE]
    centres = 4 + rng.integers(-1, 2, size=(n, 2))
    r2 = (y - centres[:, 0, None, None]) ** 2 + (x - centres[:, 1, None, None]) ** 2
    field = 0.2 * np.exp(-r2 / (2 * 1.5**2)) + 0.01 * rng.standard_normal((n, SIZE, SIZE))
    field[:, 9:15, 9:15] -= 0.03
    kappa = np.stack([field, 1.3 * field + 0.002 * rng.standard_normal(field.shape)], axis=1)
    masks = np.zeros((n, GROUPS, SIZE, SIZE), bool)
    masks[:, 0] = r2 <= 1  # the cluster: the peak pixel and its 4 neighbours
    masks[:, 1, 9:15, 9:15] = True  # the void
    masks[:, 2, 0:2, 9:16] = True  # neutral strips far from both
    masks[:, 3, 13:16, 0:3] = True
    masks[:, 4, 6:8, 12:16] = True
    return kappa.astype(np.float32), masks


def _write_run(results: Path, seed: int = 7) -> xr.Dataset:
    """A tiny <results>/test/{patches,explanations}.zarr; returns the explanation dataset."""
    rng = np.random.default_rng(seed)
    n_explained = N_COSMOLOGIES * PER_COSMOLOGY
    n_store = n_explained + 6  # the patch store also holds train maps that are not explained
    kappa, masks = _planted_maps(rng, n_store)
    cosmology_of_map = np.repeat(np.arange(n_store // PER_COSMOLOGY), PER_COSMOLOGY)
    n_cosmologies = n_store // PER_COSMOLOGY
    om_grid, s8_grid = rng.uniform(0.15, 0.45, n_cosmologies), rng.uniform(0.6, 1.0, n_cosmologies)
    split = np.where(cosmology_of_map < 2, "train", "test")
    coords = {
        "Om": ("sample", om_grid[cosmology_of_map]),
        "s8": ("sample", s8_grid[cosmology_of_map]),
        "cosmology": ("sample", np.array([f"cosmo_{c:06d}" for c in cosmology_of_map])),
        "split": ("sample", split),
    }
    level = results / "test"
    patches = xr.open_zarr(
        write_patch_store(
            level / "patches.zarr",
            kappa,
            coords,
            chunk=8,
            noise_level="test",
            drop=("nside", "source", "config", "cosmo_sop_version"),
        )
    )

    # explained maps: the test maps, in a shuffled order, located through store_index
    store_index = rng.permutation(np.flatnonzero(split == "test"))
    planted = np.array([WEIGHTS["Om"], WEIGHTS["s8"]]).T  # (group, output)
    jitter = rng.uniform(-0.02, 0.02, (n_explained, 2))  # move weight between groups 2 and 3
    scores = np.broadcast_to(planted, (n_explained, GROUPS, 2)).copy()
    scores[:, 2] += jitter
    scores[:, 3] -= jitter
    valid = np.ones((n_explained, GROUPS), bool)
    valid[:, 5] = False
    target = np.stack([patches["Om"].values[store_index], patches["s8"].values[store_index]], -1)
    partial = target[:, None, :] + 0.05 * rng.standard_normal((n_explained, GROUPS, 2))
    partial[~valid] = 0.0
    group_masks = masks[store_index]
    explanations = xr.Dataset(
        {
            "prediction": (("sample", "output"), (scores * partial).sum(1)),
            "target": (("sample", "output"), target),
            "scores": (("sample", "group", "output"), scores),
            "partial": (("sample", "group", "output"), partial),
            "masks": (("sample", "group", "y", "x"), group_masks),
            "valid": (("sample", "group"), valid),
            "pixel_count": (("sample", "group"), group_masks.sum((-2, -1))),
        },
        coords={
            "output": ["Om", "s8"],
            "Om": ("sample", target[:, 0]),
            "s8": ("sample", target[:, 1]),
            "cosmology": ("sample", patches["cosmology"].values[store_index]),
            "split": ("sample", split[store_index]),
            "store_index": ("sample", store_index),
        },
    )
    write_zarr(explanations, level / "explanations.zarr")
    return explanations.assign(kappa=(("sample", "bin", "y", "x"), kappa[store_index]))


def _kernel_spec(folder: Path) -> Path:
    """A kernel spec running this interpreter, so the notebook sees the same cosmo_sop whatever
    kernels the user has registered (a user-level "python3" may point at another Python)."""
    spec = folder / "kernels" / KERNEL
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(
        json.dumps(
            {
                "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                "display_name": "cosmo-sop test",
                "language": "python",
            }
        )
    )
    return folder


def _text(cell) -> str:
    return "".join(o.get("text", "") for o in cell.get("outputs", []) if o.output_type == "stream")


def _tagged(nb, tag: str):
    cells = [c for c in nb.cells if tag in c.get("metadata", {}).get("tags", [])]
    assert len(cells) == 1, f"expected one cell tagged {tag!r}"
    return cells[0]


def _notebook_definitions(nb) -> list[dict]:
    """The literal value of ``DEFINITIONS = [...]`` in the notebook."""
    tree = ast.parse(_tagged(nb, "definitions").source)
    value = next(
        node.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Assign)
        and any(getattr(t, "id", None) == "DEFINITIONS" for t in node.targets)
    )
    return ast.literal_eval(value)


def test_notebook_is_committed_without_outputs():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(not c.outputs and c.execution_count is None for c in code)
    first = code[0].source
    assert 'RESULTS = os.environ.get("COSMO_SOP_RESULTS", "results")' in first
    assert 'LEVEL = os.environ.get("COSMO_SOP_LEVEL", "noiseless")' in first
    # the reader starts from the workflow's default definitions
    assert _notebook_definitions(nb) == [d.to_config() for d in DEFAULT_DEFINITIONS]


def test_notebook_runs_and_finds_the_planted_voids_and_clusters(tmp_path, monkeypatch):
    explained = _write_run(tmp_path / "results")
    monkeypatch.setenv("JUPYTER_PATH", str(_kernel_spec(tmp_path / "jupyter")))
    monkeypatch.setenv("COSMO_SOP_RESULTS", str(tmp_path / "results"))
    monkeypatch.setenv("COSMO_SOP_LEVEL", "test")

    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(
        nb,
        kernel_name=KERNEL,
        timeout=120,
        startup_timeout=90,
        resources={"metadata": {"path": str(tmp_path)}},
    )
    client.execute()  # raises CellExecutionError on the first failing cell
    errors = [
        o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"
    ]
    assert not errors

    n = explained.sizes["sample"]
    counts = dict(re.findall(r"^(\w+)\s+(\d+) groups$", _text(_tagged(nb, "class-counts")), re.M))
    assert f"{5 * n} valid groups in {n} maps" in _text(_tagged(nb, "class-counts"))
    assert int(counts["cluster_paper"]) == n  # the planted peaks
    assert int(counts["cluster_authors"]) >= n
    assert int(counts["void_paper"]) >= n and int(counts["void_authors"]) >= n  # the troughs

    # The printed table is the library's, on the same maps and definitions.
    definitions = parse_definitions(_notebook_definitions(nb))
    sigma = sigma_map(explained["kappa"].values, 0.0)
    membership = classify(
        group_statistics(sigma, explained["masks"].values, explained["valid"].values, definitions),
        definitions,
    )
    table = weight_table(
        explained["scores"].values,
        membership,
        explained["valid"].values,
        n_boot=1000,
        seed=0,
        blocks=explained["cosmology"].values,
    )
    printed = _text(_tagged(nb, "weight-table"))
    for name in ("void_paper", "cluster_paper"):
        row = table.sel(definition=name)
        assert f"{float(row['ratio']):.3f}".rstrip("0") in printed
    assert float(table.sel(definition="cluster_paper")["ratio_high"]) < 1.0  # planted: s8 > Om

    # The printed verdicts are the library's records of that table: both agree with the paper.
    printed = _text(_tagged(nb, "verdicts"))
    pattern = rf"^(\S+)\s+(?:void|cluster)\s.*\s({'|'.join(OUTCOMES)})\b"
    outcomes = dict(re.findall(pattern, printed, re.M))
    assert outcomes == {v["definition"]: v["outcome"] for v in verdicts(table)}
    assert outcomes["void_paper"] == "agrees" and outcomes["cluster_paper"] == "agrees"
    assert f"{n} maps in {N_COSMOLOGIES} blocks" in printed

    histograms = nb.cells[
        [i for i, c in enumerate(nb.cells) if "class_weights(" in c.get("source", "")][0]
    ]
    assert any("image/png" in o.get("data", {}) for o in histograms.outputs)
