"""The config schema, its defaults and the CLI's handling of a bad config."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from cosmo_sop.config import load_config, validate_config
from cosmo_sop.errors import InputError

ROOT = Path(__file__).resolve().parents[1]


def test_demo_config_is_valid_and_defaults_are_filled():
    config = load_config(ROOT / "config" / "config.yaml")
    assert config["source"] == "mock"
    assert config["ingest"]["split"] == {"train": 0.8, "val": 0.1, "test": 0.1}
    assert {level["name"] for level in config["noise"]} == {"noiseless", "stage3"}
    stage3 = next(level for level in config["noise"] if level["name"] == "stage3")
    assert stage3["smoothing_fwhm_arcmin"] == 0.0  # default filled inside a list item


def test_schema_link_points_at_the_package_schema():
    link = ROOT / "workflow" / "schemas" / "config.schema.yaml"
    assert link.resolve() == (ROOT / "cosmo_sop" / "schemas" / "config.schema.yaml").resolve()


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
        validate_config(config, "test.yaml")


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
    membership = classify(group_statistics(sigma_map(rng.random((3, 1, 8, 8))), masks))
    table = weight_table(rng.dirichlet(np.ones(4), size=(3, 2)).transpose(0, 2, 1), membership)
    assert table.attrs["n_boot"] == options["n_boot"]
    assert table.attrs["nonzero_only"] == int(options["nonzero_only"])
    assert purity_table({"sop": np.full((3, 2), 0.5)}).attrs["n_boot"] == options["n_boot"]
    # the workflow resamples maps one by one unless the config says otherwise
    assert options["bootstrap_blocks"] == "map"


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
