"""Loading and validating the workflow configuration.

The schema (``cosmo_sop/schemas/config.schema.yaml``, linked from ``workflow/schemas/``) is the
single source of truth for keys and defaults: the Snakefile and the CLI validate against the same
file with :func:`snakemake.utils.validate`, which also fills in the defaults.
"""

from __future__ import annotations

import copy
import functools
import os
from collections.abc import Mapping
from importlib.resources import files
from pathlib import Path
from typing import Any

import yaml

from cosmo_sop.errors import InputError

SCHEMA_PATH = Path(str(files("cosmo_sop") / "schemas" / "config.schema.yaml"))


def validate_config(
    config: dict[str, Any], where: str | os.PathLike = "config", *, across_sections: bool = True
) -> dict[str, Any]:
    """Return a validated copy of ``config`` with every default filled in.

    ``across_sections=False`` skips the checks that compare one section with another (the
    ingest bins against the mock's redshift bins): for one section on its own, whose
    neighbours are only defaults.

    Raises
    ------
    InputError
        Naming ``where`` and the first key that fails the schema or a cross-key check.
    """
    from snakemake.exceptions import WorkflowError
    from snakemake.utils import validate

    config = copy.deepcopy(config) if config else {}
    try:
        validate(config, str(SCHEMA_PATH), set_default=True)
    except WorkflowError as exc:
        raise InputError(where, _schema_message(exc)) from None
    _check_consistency(config, where, across_sections)
    return config


def load_config(path: str | os.PathLike) -> dict[str, Any]:
    """Read a YAML config file and validate it (see :func:`validate_config`)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "config file not found")
    try:
        config = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise InputError(path, f"not valid YAML ({str(exc).splitlines()[0]})") from None
    if config is not None and not isinstance(config, dict):
        raise InputError(path, "config must be a mapping of keys to values")
    return validate_config(config or {}, path)


@functools.cache
def _schema_defaults() -> dict[str, Any]:
    return validate_config({}, "default config")


def defaults(section: str) -> Any:
    """The schema's defaults of one config section (``"training"``, ``"sop.training"``, ...),
    a fresh copy: the only place in cosmo-sop where defaults come from."""
    value: Any = _schema_defaults()
    for key in section.split("."):
        value = value[key]
    return copy.deepcopy(value)


def with_defaults(
    section: str,
    options: Mapping[str, Any] | list | None = None,
    *,
    where: str | os.PathLike | None = None,
) -> Any:
    """``options`` of one config section, validated by the schema and completed with its
    defaults, for library calls that do not go through :func:`load_config`.

    A list section (``noise``) takes a list: ``with_defaults("noise", [level])[0]`` is one
    level with its defaults. Checks across sections are left to :func:`validate_config` of a
    whole config. ``where`` is named in errors (default: the section).

    Raises
    ------
    InputError
        Naming the config key that fails the schema.
    """
    nested: Any = list(options) if isinstance(options, list) else dict(options or {})
    for key in reversed(section.split(".")):
        nested = {key: nested}
    where = f"config section '{section}'" if where is None else where
    value: Any = validate_config(nested, where, across_sections=False)
    for key in section.split("."):
        value = value[key]
    return value


def _schema_message(exc: Exception) -> str:
    # snakemake wraps the jsonschema error; its first lines hold the useful part.
    cause = exc.__cause__ or exc.__context__
    import jsonschema

    while cause is not None and not isinstance(cause, jsonschema.ValidationError):
        cause = cause.__cause__ or cause.__context__
    if cause is None:
        text = " ".join(str(exc).split())
        return f"fails the config schema: {text[:300]}"
    key = ".".join(str(p) for p in cause.absolute_path) or "(top level)"
    return f"config key '{key}' fails the schema: {cause.message}"


def _check_consistency(
    config: dict[str, Any], where: str | os.PathLike, across_sections: bool = True
) -> None:
    """Checks that span several keys, which JSON Schema cannot express."""
    split = config["ingest"]["split"]
    total = split["train"] + split["val"] + split["test"]
    if abs(total - 1.0) > 1e-6:
        raise InputError(where, f"config key 'ingest.split' fractions sum to {total:g}, not 1")
    names = [level["name"] for level in config["noise"]]
    if len(set(names)) != len(names):
        raise InputError(where, f"config key 'noise' repeats a level name: {names}")
    if config["source"] == "cosmogrid" and not config["cosmogrid"]["root"]:
        raise InputError(
            where, "config key 'cosmogrid.root' must be set when source is 'cosmogrid'"
        )
    if config["source"] == "mock":
        n_bins = config["mock"]["redshift"]["n_bins"]
        bad = [b for b in config["ingest"]["bins"] if b > n_bins]
        if bad and across_sections:
            raise InputError(
                where, f"config key 'ingest.bins' asks for bin(s) {bad} but the mock has {n_bins}"
            )
        nside = config["mock"]["nside"]
        lmax = config["mock"]["lmax"]
        if lmax is not None and lmax > 3 * nside - 1:
            raise InputError(where, f"config key 'mock.lmax' = {lmax} exceeds 3 * nside - 1")
