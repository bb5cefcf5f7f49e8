"""Knowledge lives once: every config default the code uses is the schema's.

The schema (``cosmo_sop/schemas/config.schema.yaml``) is the only place that states a default.
Library code takes its options from :func:`cosmo_sop.config.defaults` or
:func:`cosmo_sop.config.with_defaults`; these tests read the package's source and fail where a
module keeps its own table of defaults, or where a keyword parameter named after a config key
defaults to a value the schema does not give that key.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
import yaml

from cosmo_sop.config import SCHEMA_PATH, defaults, with_defaults
from cosmo_sop.errors import InputError

PACKAGE = Path(__file__).resolve().parents[1] / "cosmo_sop"
SOURCES = sorted(PACKAGE.rglob("*.py"))

#: The config sections each part of the package takes its options from. A keyword parameter of
#: a function there that is named like a key of one of its sections must default to that key's
#: schema default (or to None, or to nothing). Figures take display options, not config.
SECTIONS = {
    "sources/cosmogrid/": ["cosmogrid"],
    "sources/mock/": ["mock", "mock.redshift", "mock.fiducial"],
    "ingest/": ["ingest"],
    "noise.py": ["noise"],
    "segmentation.py": ["segmentation"],
    "models/": ["backbone", "sop"],
    "training/": ["training", "sop.training", "sop", "backbone"],
    "explain.py": ["explain"],
    "attribution/": ["evaluation"],
    "faithfulness/": ["evaluation", "structures"],
    "structures/": ["structures"],
    "summary_statistics/": ["summary_statistics"],
}
#: Parameters that share a name with a config key but are another knob.
OTHER_KNOBS = {
    (
        "gradient_shap",
        "n_samples",
    ): "noise samples of GradientSHAP; evaluation.n_samples is KernelSHAP's and LIME's",
}


def _section_defaults(node: dict[str, Any], path: str = "") -> dict[str, dict[str, Any]]:
    """section path -> {key: default} for every section of the schema, the properties of list
    items (noise levels) counting as their list's section."""
    found: dict[str, dict[str, Any]] = defaultdict(dict)
    for key, spec in node.get("properties", {}).items():
        if "default" in spec and path:
            found[path][key] = spec["default"]
        where = f"{path}.{key}" if path else key
        for child in (spec, spec.get("items", {})):
            if isinstance(child, dict) and "properties" in child:
                for section, entries in _section_defaults(child, where).items():
                    found[section].update(entries)
    return found


SCHEMA = yaml.safe_load(SCHEMA_PATH.read_text())
SCHEMA_DEFAULTS = _section_defaults(SCHEMA)


def _sections_of(path: Path) -> list[str]:
    relative = path.relative_to(PACKAGE).as_posix()
    return [
        s for prefix, sections in SECTIONS.items() if relative.startswith(prefix) for s in sections
    ]


def _literal(node: ast.expr) -> tuple[bool, Any]:
    try:
        return True, ast.literal_eval(node)
    except ValueError:
        return False, None


def _keyword_defaults(tree: ast.Module):
    """(function name, parameter name, default node) of every function in a module."""
    for node in ast.walk(tree):
        if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        args = node.args
        positional = [*args.posonlyargs, *args.args]
        pairs = list(zip(positional[len(positional) - len(args.defaults) :], args.defaults))
        pairs += [(a, d) for a, d in zip(args.kwonlyargs, args.kw_defaults) if d is not None]
        for arg, default in pairs:
            yield node.name, arg.arg, default


def _same(code: Any, schema: Any) -> bool:
    if isinstance(code, tuple | list) and isinstance(schema, list):
        return list(code) == schema
    return code == schema and type(code) is not bool or code is schema


def test_the_sources_and_sections_were_found():
    assert len(SOURCES) > 30 and SCHEMA_DEFAULTS["training"]["mask_probability"] == 0.5
    assert SCHEMA_DEFAULTS["noise"]["sigma_e"] == 0.26
    named = {s for sections in SECTIONS.values() for s in sections}
    assert named <= set(SCHEMA_DEFAULTS), named - set(SCHEMA_DEFAULTS)
    assert all(
        any(p.relative_to(PACKAGE).as_posix().startswith(k) for p in SOURCES) for k in SECTIONS
    )


def test_no_module_keeps_its_own_table_of_defaults():
    tables = []
    for path in SOURCES:
        for node in ast.walk(ast.parse(path.read_text())):
            targets = (
                node.targets if isinstance(node, ast.Assign) else [getattr(node, "target", None)]
            )
            if isinstance(node, ast.Assign | ast.AnnAssign):
                for target in targets:
                    if isinstance(target, ast.Name) and target.id.endswith("_DEFAULTS"):
                        tables.append(f"{path.relative_to(PACKAGE)}:{node.lineno} {target.id}")
    assert not tables, f"defaults belong in the schema: {tables}"


def test_keyword_defaults_named_after_config_keys_are_the_schemas():
    """A parameter named like a key of its module's config sections (``n_boot``,
    ``keep_fraction``, ``mask_probability``) has no default, defaults to None (the caller's
    config decides), or defaults to what the schema gives that key."""
    wrong = []
    for path in SOURCES:
        sections = _sections_of(path)
        for function, name, node in _keyword_defaults(ast.parse(path.read_text())):
            stated = [(s, SCHEMA_DEFAULTS[s][name]) for s in sections if name in SCHEMA_DEFAULTS[s]]
            is_literal, value = _literal(node)
            if not stated or not is_literal or value is None or (function, name) in OTHER_KNOBS:
                continue
            if not any(_same(value, default) for _, default in stated):
                schema = ", ".join(f"{where}.{name}={default!r}" for where, default in stated)
                wrong.append(
                    f"{path.relative_to(PACKAGE)} {function}({name}={value!r}); schema: {schema}"
                )
    assert not wrong, "\n".join(["keyword defaults that are not the schema's:", *wrong])


@pytest.mark.parametrize("section", ["training", "sop.training", "evaluation", "structures"])
def test_section_defaults_are_the_schema_file(section):
    node = SCHEMA
    for key in section.split("."):
        node = node["properties"][key]
    stated = {key: spec["default"] for key, spec in node["properties"].items() if "default" in spec}
    assert defaults(section) == stated
    assert with_defaults(section, {}) == stated


def test_with_defaults_keeps_given_keys_and_refuses_bad_ones():
    options = with_defaults("training", {"epochs": 3})
    assert (
        options["epochs"] == 3
        and options["mask_probability"] == defaults("training")["mask_probability"]
    )
    with pytest.raises(InputError, match="training.epochs"):
        with_defaults("training", {"epochs": 0})
    defaults("training")["epochs"] = -1  # a copy: the next caller still gets the schema's
    assert (
        defaults("training")["epochs"]
        == SCHEMA["properties"]["training"]["properties"]["epochs"]["default"]
    )
