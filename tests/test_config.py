"""The config schema, its defaults and the CLI's handling of a bad config."""

from __future__ import annotations

import copy
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from cosmo_sop.config import SCHEMA_PATH, load_config, validate_config
from cosmo_sop.errors import InputError

ROOT = Path(__file__).resolve().parents[1]


def test_demo_config_is_valid_and_defaults_are_filled():
    config = load_config(ROOT / "config" / "config.yaml")
    assert config["source"] == "mock"
    assert config["ingest"]["split"] == {"train": 0.65, "val": 0.1, "test": 0.25}
    # issue 24: at least 40 test cosmologies for the verdicts, at least 100 to train on
    from cosmo_sop.ingest.split import split_counts

    counts = split_counts(config["mock"]["n_cosmologies"], config["ingest"]["split"])
    assert counts["test"] >= 40 and counts["train"] >= 100
    assert {level["name"] for level in config["noise"]} == {"noiseless", "stage3"}
    stage3 = next(level for level in config["noise"] if level["name"] == "stage3")
    assert stage3["smoothing_fwhm_arcmin"] == 0.0  # default filled inside a list item


def test_paper_config_is_valid_once_given_the_release(tmp_path):
    import yaml

    raw = yaml.safe_load((ROOT / "config" / "paper.yaml").read_text())
    with pytest.raises(InputError, match="'cosmogrid.root' must be set"):
        validate_config(raw, "paper.yaml", whole=True)
    raw["cosmogrid"]["root"] = str(tmp_path)
    config = validate_config(raw, "paper.yaml", whole=True)
    assert config["sop"]["max_train_maps"] is None and config["sop"]["training"]["epochs"] >= 20
    assert config["evaluation"]["n_maps"] >= 200


def test_schema_link_points_at_the_package_schema():
    link = ROOT / "workflow" / "schemas" / "config.schema.yaml"
    assert link.resolve() == (ROOT / "cosmo_sop" / "schemas" / "config.schema.yaml").resolve()


@pytest.mark.parametrize("name", ["config.yaml", "lognormal.yaml", "paper.yaml", None])
def test_defaults_are_filled_as_snakemakes_validator_fills_them(name, tmp_path):
    """The schema, parsed once per process, fills in the same defaults as
    snakemake.utils.validate, which parses it anew on each call."""
    from snakemake.utils import validate

    raw = yaml.safe_load((ROOT / "config" / name).read_text()) if name else {}
    if "cosmogrid" in raw:
        raw["cosmogrid"]["root"] = str(tmp_path)
    theirs = copy.deepcopy(raw)
    validate(theirs, str(SCHEMA_PATH), set_default=True)
    assert validate_config(raw, name or "defaults", whole=True) == theirs


def test_a_changed_config_leaves_the_next_ones_defaults_alone():
    """A default is copied into each config: changing one config's nested default (a section
    defaulted whole, a list) must not reach the schema the next validation reads."""
    first = validate_config({}, "first", whole=True)
    first["training"]["epochs"] = -1
    first["structures"]["definitions"].clear()
    first["noise"][0]["name"] = "changed"
    assert validate_config({}, "second", whole=True) == validate_config({}, "third", whole=True)
    second = validate_config({}, "second", whole=True)
    assert second["training"]["epochs"] > 0 and second["structures"]["definitions"]
    assert second["noise"][0]["name"] != "changed"


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"mock": {"nside": 100}}, "mock.nside"),
        ({"source": "cosmogrid"}, "cosmogrid.root"),
        ({"ingest": {"split": {"train": 0.5, "val": 0.1, "test": 0.1}}}, "sum to 0.7"),
        ({"noise": [{"name": "a"}, {"name": "a"}]}, "repeats a level name"),
        ({"noise": [{"name": "bad name"}]}, "noise.0.name"),
        ({"ingest": {"bins": [5]}}, "ingest.bins"),
        ({"unknown_key": 1}, "unknown_key"),
    ],
)
def test_bad_config_is_refused_naming_the_key(config, message):
    with pytest.raises(InputError, match=message):
        validate_config(config, "test.yaml", whole=True)


SIZE_CASES = [
    # (config, the one line a user sees, after "test.yaml: ")
    (
        {"ingest": {"patch_size": 8}},
        "config key 'ingest.patch_size' = 8 is too small for the backbone (widths [16, 32, 48], "
        "kernel 4): the smallest valid patch is 29, or a 'backbone.kernel_size' of at most 1",
    ),
    (
        {"ingest": {"patch_size": 12}, "backbone": {"widths": [4, 8], "kernel_size": 13}},
        "config key 'ingest.patch_size' = 12 is too small for the backbone (widths [4, 8], "
        "kernel 13): the smallest valid patch is 40, or a 'backbone.kernel_size' of at most 3",
    ),
    (
        {"ingest": {"patch_size": 15}, "backbone": {"widths": [4, 4, 4, 4]}},
        "config key 'ingest.patch_size' = 15 is too small for the backbone (widths "
        "[4, 4, 4, 4], kernel 4): the smallest valid patch is 61",
    ),
    (
        {"ingest": {"patch_size": 12}, "backbone": {"widths": [4, 4], "kernel_size": 3}},
        "config key 'sop.patch_tokens' = 14 exceeds 'ingest.patch_size' = 12: at most 12 "
        "tokens per side",
    ),
    (
        {"sop": {"n_heads": 3}},
        "config key 'sop.n_heads' = 3 does not divide 'sop.d_model' = 64: valid n_heads are "
        "[1, 2, 4, 8, 16, 32, 64]",
    ),
    (
        {"sop": {"encoder_blocks": 4}},
        "config key 'sop.encoder_blocks' = 4 exceeds the backbone's 3 conv blocks "
        "('backbone.widths' [16, 32, 48])",
    ),
]


@pytest.mark.parametrize(("config", "message"), SIZE_CASES)
def test_network_sizes_are_checked_with_the_valid_value(config, message):
    with pytest.raises(InputError) as info:
        validate_config(config, "test.yaml", whole=True)
    assert str(info.value) == f"test.yaml: {message}"


@pytest.mark.parametrize(("widths", "kernel"), [([16, 32, 48], 4), ([4, 8], 3), ([2, 2, 2, 2], 6)])
def test_the_smallest_valid_patch_is_the_networks_own(widths, kernel):
    """The patch the message offers builds the network, one pixel less does not: config.py's
    arithmetic is the network's. Segment tokens: SOP's token grid plays no part."""
    torch = pytest.importorskip("torch")
    from cosmo_sop.models import ConvRegressor

    config = {
        "backbone": {"widths": widths, "kernel_size": kernel},
        "sop": {"tokens": "segments", "encoder_blocks": 1},
    }
    with pytest.raises(InputError, match="smallest valid patch is") as info:
        validate_config({**config, "ingest": {"patch_size": 8}}, whole=True)
    smallest = int(re.search(r"smallest valid patch is (\d+)", str(info.value)).group(1))
    validate_config({**config, "ingest": {"patch_size": smallest}}, whole=True)
    net = ConvRegressor(1, input_size=smallest, widths=widths, kernel_size=kernel, hidden=[4])
    assert net(torch.zeros(2, 1, smallest, smallest)).shape == (2, 2)
    with pytest.raises(ValueError, match="too small"):
        ConvRegressor(1, input_size=smallest - 1, widths=widths, kernel_size=kernel)


def test_segment_tokens_ignore_the_token_grid():
    config = {"ingest": {"patch_size": 12}, "backbone": {"widths": [4, 4], "kernel_size": 3}}
    with pytest.raises(InputError, match="sop.patch_tokens"):
        validate_config(config, whole=True)
    validate_config({**config, "sop": {"tokens": "segments"}}, whole=True)


def test_a_steps_own_sections_are_not_checked_against_default_neighbours(tmp_path):
    """The workflow hands a step only its sections (ingest without backbone): their checks
    against other sections ran when the workflow started. A file is a whole config."""
    ingest = {"ingest": {"patch_size": 12}}
    assert validate_config(ingest, "--config-json")["ingest"]["patch_size"] == 12
    with pytest.raises(InputError, match="ingest.patch_size"):
        validate_config(ingest, "--config-json", whole=True)
    path = tmp_path / "small.yaml"
    path.write_text(yaml.safe_dump(ingest))
    with pytest.raises(InputError, match=f"{path}: config key 'ingest.patch_size' = 12"):
        load_config(path)
    # checks within a section always run, and so do those of sections named together
    with pytest.raises(InputError, match="sop.n_heads"):
        validate_config({"sop": {"n_heads": 3}})
    with pytest.raises(InputError, match="ingest.patch_size"):
        validate_config({**ingest, "backbone": {"kernel_size": 4}})


@pytest.mark.parametrize(
    ("config", "message"),
    [
        # names that become folders: one safe path segment, and no shared entry of results/
        ({"noise": [{"name": ".."}]}, "config key 'noise.0.name' fails the schema: '..' does"),
        ({"noise": [{"name": "."}]}, "'.' does not match"),
        ({"noise": [{"name": "-h"}]}, "'-h' does not match"),
        ({"noise": [{"name": "a/b"}]}, "starting with a letter or digit"),
        ({"noise": [{"name": "figures"}]}, "names a level 'figures', which the results folder"),
        ({"noise": [{"name": "patches.zarr"}]}, "names a level 'patches.zarr'"),
        ({"noise": [{"name": "benchmarks"}]}, "names a level 'benchmarks'"),  # the jobs' records
        ({"noise": [{"name": "Deep"}, {"name": "deep"}]}, "one folder on a case-insensitive"),
        ({"structures": {"definitions": [{"name": "..", "kind": "void"}]}}, "definitions.0.name"),
        # lists whose repeats would be silently doubled
        ({"ingest": {"bins": [1, 1]}}, "config key 'ingest.bins' fails the schema: \\[1, 1\\] has"),
        ({"evaluation": {"methods": ["sop", "sop"]}}, "evaluation.methods"),
        ({"summary_statistics": {"regressors": ["mlp", "mlp"]}}, "summary_statistics.regressors"),
        ({"noise": []}, "config key 'noise' fails the schema"),
        ({"training": {"mask_min_keep": 0.5, "mask_max_keep": 0.3}}, "exceeds 'training.mask_max"),
        # a list of densities is one per bin; found at the noise step otherwise
        (
            {"noise": [{"name": "a", "n_gal_arcmin2": [5.0, 5.0]}]},
            "config key 'noise\\[a\\].n_gal_arcmin2' lists 2 galaxy densities but "
            "'ingest.bins' makes 4 bins",
        ),
    ],
)
def test_more_bad_configs_are_refused_naming_the_key(config, message):
    with pytest.raises(InputError, match=message):
        validate_config(config, "test.yaml", whole=True)


def test_a_results_path_that_is_a_file_is_refused(tmp_path):
    results = tmp_path / "results"
    results.write_text("not a folder")
    with pytest.raises(InputError, match=f"config key 'results' = '{results}' is a file"):
        validate_config({"results": str(results)}, whole=True)
    with pytest.raises(InputError, match="config key 'mock.root'"):
        validate_config({"mock": {"root": str(results)}}, whole=True)
    validate_config({"results": str(tmp_path)}, whole=True)


def test_config_validates_without_pytorch(tmp_path):
    """The data-stage rules run without PyTorch: the size checks must not need it."""
    path = tmp_path / "small.yaml"
    path.write_text(yaml.safe_dump({"ingest": {"patch_size": 8}}))
    code = (
        "import sys\n"
        "class NoTorch:\n"  # any import of torch now fails, as where it is not installed
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] == 'torch': raise ImportError(name)\n"
        "sys.meta_path.insert(0, NoTorch())\n"
        "from cosmo_sop.config import load_config\n"
        "from cosmo_sop.errors import InputError\n"
        f"try: load_config({str(path)!r})\n"
        "except InputError as e: print(e)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "the smallest valid patch is 29" in result.stdout


def test_smallest_input_size_inverts_block_output_sizes():
    from cosmo_sop.conv_sizes import block_output_sizes, smallest_input_size

    for n_blocks in range(1, 5):
        for kernel in range(1, 8):
            smallest = smallest_input_size(n_blocks, kernel)
            assert block_output_sizes(smallest, n_blocks, kernel)[-1] == 1
            with pytest.raises(ValueError):
                block_output_sizes(smallest - 1, n_blocks, kernel)


def test_cli_reports_a_bad_config_file_in_one_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"mock": {"n_cosmologies": 0}}))
    result = subprocess.run(
        [sys.executable, "-m", "cosmo_sop", "config", "--config", str(bad)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert str(bad) in lines[0] and "mock.n_cosmologies" in lines[0]
    assert "Traceback" not in result.stderr


def test_cli_reports_invalid_yaml(tmp_path):
    bad = tmp_path / "broken.yaml"
    bad.write_text("mock: [unclosed\n")
    result = subprocess.run(
        [sys.executable, "-m", "cosmo_sop", "config", "--config", str(bad)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert "not valid YAML" in result.stderr and str(bad) in result.stderr


def test_schema_default_structures_are_the_library_defaults():
    import numpy as np

    from cosmo_sop.structures import (
        DEFAULT_DEFINITIONS,
        classify,
        group_statistics,
        parse_definitions,
        purity_table,
        sigma_map,
        weight_table,
    )

    options = validate_config({})["structures"]
    # the library's default definitions are the schema's items, exactly (they round-trip)
    assert parse_definitions(options["definitions"]) == DEFAULT_DEFINITIONS
    assert parse_definitions(None) == DEFAULT_DEFINITIONS
    assert [d.to_config() for d in DEFAULT_DEFINITIONS] == options["definitions"]
    # library calls without options take the schema's bootstrap settings
    rng = np.random.default_rng(0)
    masks = rng.random((3, 4, 8, 8)) < 0.3
    membership = classify(group_statistics(sigma_map(rng.random((3, 1, 8, 8)), 0.0), masks))
    table = weight_table(rng.dirichlet(np.ones(4), size=(3, 2)).transpose(0, 2, 1), membership)
    assert table.attrs["n_boot"] == options["n_boot"]
    assert table.attrs["nonzero_only"] == int(options["nonzero_only"])
    assert purity_table({"sop": np.full((3, 2), 0.5)}).attrs["n_boot"] == options["n_boot"]
    # the workflow resamples whole cosmologies (their patches are correlated) unless told otherwise
    assert options["bootstrap_blocks"] == "cosmology"
    assert options["nulls"] == ["uniform", "random"]


def _schema_keys(node: dict, prefix: str = "") -> list[tuple[str, str]]:
    """(section, key) of every key of the schema, list items counting as their list's."""
    keys = []
    for key, spec in node.get("properties", {}).items():
        keys.append((prefix, key))
        for child in (spec, spec.get("items", {})):
            if isinstance(child, dict) and "properties" in child:
                keys += _schema_keys(child, f"{prefix}.{key}" if prefix else key)
    return keys


def test_config_readme_explains_every_key():
    """config/README.md has a section per top-level section, and names every key in it."""
    schema = yaml.safe_load((ROOT / "cosmo_sop" / "schemas" / "config.schema.yaml").read_text())
    readme = (ROOT / "config" / "README.md").read_text()
    sections = {"": readme.split("\n## ")[1]}
    for part in readme.split("\n## ")[1:]:
        sections[part.split()[0].strip("`")] = part
    missing = []
    for section, key in _schema_keys(schema):
        top = section.split(".")[0]
        text = sections.get(top, "")
        if not section and key in sections:
            continue  # a section of its own
        if not re.search(rf"`\.?{re.escape(key)}`|\b{re.escape(key)}\b", text):
            missing.append(f"{section}.{key}" if section else key)
    assert not missing, f"config/README.md does not explain: {missing}"


def test_lognormal_config_is_the_demo_without_halos_in_folders_of_its_own():
    """config/lognormal.yaml, given as --configfile, is merged over config/config.yaml by
    Snakemake (snakemake.utils.update_config): the demo with mock.halos off, in its own
    results and mock folders, so the two runs never share a file."""
    from snakemake.utils import update_config

    demo = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    merged = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    update_config(merged, yaml.safe_load((ROOT / "config" / "lognormal.yaml").read_text()))
    demo, merged = validate_config(demo, "demo"), validate_config(merged, "lognormal")
    assert demo["mock"]["halos"]["enabled"] and not merged["mock"]["halos"]["enabled"]
    assert merged["results"] != demo["results"]
    assert merged["mock"]["root"] != demo["mock"]["root"]
    for section in ("training", "sop", "noise", "ingest"):
        assert merged[section] == demo[section]
    assert {k: v for k, v in merged["mock"].items() if k not in ("root", "halos")} == {
        k: v for k, v in demo["mock"].items() if k not in ("root", "halos")
    }
