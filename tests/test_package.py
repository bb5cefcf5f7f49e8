"""The package's layout stays as the README describes it: a public API per subpackage, and a
rule's code one hop away from the rule."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import re
import types
from pathlib import Path

import pytest

import cosmo_sop
from cosmo_sop.cli import COMMANDS

ROOT = Path(__file__).resolve().parents[1]
SUBPACKAGES = [m.name for m in pkgutil.walk_packages(cosmo_sop.__path__, "cosmo_sop.") if m.ispkg]


def _readme_rule_table() -> list[tuple[str, list[str], str, str]]:
    """(rule, commands, module path, entry) rows of the README's Layout table."""
    rows = []
    pattern = r"^\| `(\w+)` \| (.+?) \| `(cosmo_sop/[\w/]+\.py)` `(\w+)` \|$"
    for line in (ROOT / "README.md").read_text().splitlines():
        match = re.match(pattern, line)
        if match:
            rule, commands, path, entry = match.groups()
            rows.append((rule, re.findall(r"`([\w-]+)`", commands), path, entry))
    return rows


def _rule_shell(rule: str) -> str:
    """The text of a rule's definition in workflow/rules/*.smk."""
    for smk in sorted((ROOT / "workflow" / "rules").glob("*.smk")):
        text = smk.read_text()
        match = re.search(rf"^ *rule {rule}:\n(.*?)(?=^ *rule |^else:|\Z)", text, re.S | re.M)
        if match:
            return match.group(1)
    raise AssertionError(f"no rule {rule} in workflow/rules")


def test_subpackages_were_found():
    assert {"cosmo_sop.structures", "cosmo_sop.training", "cosmo_sop.sources.mock"} <= set(
        SUBPACKAGES
    )


@pytest.mark.parametrize("name", SUBPACKAGES)
def test_every_subpackage_declares_its_public_api(name):
    package = importlib.import_module(name)
    assert package.__doc__, f"{name} has no docstring"
    assert isinstance(getattr(package, "__all__", None), list | tuple), f"{name} lacks __all__"
    missing = [n for n in package.__all__ if not hasattr(package, n)]
    assert not missing, f"{name}.__all__ names what it does not define: {missing}"


@pytest.mark.parametrize("name", SUBPACKAGES)
def test_no_exported_name_hides_a_submodule(name):
    """``from cosmo_sop.x import run`` must not turn ``cosmo_sop.x.run`` (a module) into a
    function for everyone who imported the module by its dotted name."""
    package = importlib.import_module(name)
    for sub in pkgutil.iter_modules(package.__path__):
        importlib.import_module(f"{name}.{sub.name}")
        attribute = getattr(package, sub.name)
        assert isinstance(attribute, types.ModuleType), f"{name}.{sub.name} is {attribute!r}"


def test_the_readme_table_names_every_rule():
    rows = _readme_rule_table()
    documented = {rule for rule, *_ in rows}
    defined = set()
    for smk in (ROOT / "workflow" / "rules").glob("*.smk"):
        defined |= set(re.findall(r"^ *rule (\w+):", smk.read_text(), re.M))
    assert documented == defined


@pytest.mark.parametrize("row", _readme_rule_table(), ids=lambda row: row[0])
def test_a_rules_code_is_one_hop_away(row):
    """The rule runs the command; the command's function imports the entry from the module."""
    rule, commands, path, entry = row
    shell = _rule_shell(rule)
    entries = {command.name: command.entry for command in COMMANDS}
    module = path.removesuffix(".py").replace("/", ".")
    for name in commands:
        assert f'"{name}"' in shell or f"cosmo_sop {name} " in shell, (rule, name)
        source = inspect.getsource(entries[name])
        assert re.search(rf"from {re.escape(module)} import {entry}\b", source), (name, source)
        assert callable(getattr(importlib.import_module(module), entry))
