"""Loading and validating the workflow configuration.

The schema (``cosmo_sop/schemas/config.schema.yaml``, linked from ``workflow/schemas/``) is the
single source of truth for keys and defaults. :func:`validate_config` is the one validation, for
the Snakefile (before any job), the CLI and the library alike: the schema, through
:mod:`jsonschema`, which also fills in the defaults as :func:`snakemake.utils.validate` does, then
the checks across keys that a schema cannot state (names that become folders, network sizes
against the patch size). Standard library and PyYAML only at import (plus jsonschema when
called): the data stage runs without PyTorch, so the network arithmetic comes from
:mod:`cosmo_sop.conv_sizes`.
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

from cosmo_sop import layout
from cosmo_sop.conv_sizes import smallest_input_size
from cosmo_sop.errors import InputError

SCHEMA_PATH = Path(str(files("cosmo_sop") / "schemas" / "config.schema.yaml"))


def validate_config(
    config: dict[str, Any] | None, where: str | os.PathLike = "config", *, whole: bool = False
) -> dict[str, Any]:
    """Return a validated copy of ``config`` with every default filled in.

    The one validation of a config: the CLI (``--config``, ``--config-json``), the workflow
    (``workflow/rules/common.smk``, before any job) and the library all call it. After the
    schema come the checks JSON Schema cannot state (:func:`_check_consistency`): names that
    become paths, the split, the network sizes against the patch size, ...

    Parameters
    ----------
    config
        Config keys; absent ones take the schema's defaults.
    where
        Named in errors (a file, ``--config-json``).
    whole
        ``config`` is a whole config (a config file, the workflow's config): a section it
        leaves out is the default one and is checked against the others. Otherwise
        (``False``), sections are checked against each other only where ``config`` names them
        all: the workflow hands each step only its own sections (``ingest`` without
        ``backbone``), whose neighbours there are defaults, not the run's values.

    Raises
    ------
    InputError
        Naming ``where`` and the first key that fails the schema or a cross-key check.
    """
    import jsonschema

    given = None if whole else frozenset(config or ())
    config = copy.deepcopy(config) if config else {}
    try:
        _validator().validate(config)
    except jsonschema.ValidationError as exc:
        raise InputError(where, _schema_message(exc)) from None
    _check_consistency(config, where, given)
    return config


def load_config(path: str | os.PathLike) -> dict[str, Any]:
    """Read a YAML config file and validate it (see :func:`validate_config`)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "config file not found")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(path, f"cannot read the config file ({exc})") from None
    try:
        config = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise _yaml_error(path, text, exc) from None
    if config is not None and not isinstance(config, dict):
        raise InputError(path, "config must be a mapping of keys to values")
    return validate_config(config, path, whole=True)


def _yaml_error(path: Path, text: str, exc: yaml.YAMLError) -> InputError:
    """One line for a YAML syntax error: ``file:line:column``, PyYAML's words, where the
    construct it was reading began, and the offending line as it reads (an editor jumps to
    ``file:line:column``)."""
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None)
    if mark is None or not problem:
        return InputError(path, f"not valid YAML ({str(exc).splitlines()[0]})")
    context, begun = getattr(exc, "context", None), getattr(exc, "context_mark", None)
    if context and begun is not None and (begun.line, begun.column) != (mark.line, mark.column):
        problem += f" ({context} begun at {begun.line + 1}:{begun.column + 1})"
    elif context:
        problem += f" ({context})"
    lines = text.splitlines()
    shown = f"line {lines[mark.line].strip()!r}" if mark.line < len(lines) else "the end of file"
    return InputError(
        f"{path}:{mark.line + 1}:{mark.column + 1}", f"not valid YAML: {problem}, at {shown}"
    )


@functools.cache
def _schema_defaults() -> dict[str, Any]:
    # Not a whole config: reading a default runs no check across sections (the defaults' own
    # are tested) and none on the file system ('results' is relative to the working folder).
    return validate_config({}, "default config")


def defaults(section: str) -> Any:
    """The schema's defaults of one config section (``"training"``, ``"sop.training"``, ...),
    a fresh copy: the only place in cosmo-sop where defaults come from."""
    value: Any = _schema_defaults()
    for key in section.split("."):
        value = value[key]
    return copy.deepcopy(value)


def fill_defaults(section: str, **values: Any) -> dict[str, Any]:
    """``values`` (keys of config section ``section``) with each None replaced by the schema's
    default of that key: for library functions whose keyword arguments default to None."""
    if all(value is not None for value in values.values()):
        return values  # e.g. a model rebuilt from its config: no need to read the schema
    schema = defaults(section)
    return {key: schema[key] if value is None else value for key, value in values.items()}


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
    value: Any = validate_config(nested, where)
    for key in section.split("."):
        value = value[key]
    return value


def task_config(config: Mapping[str, Any], task: str, *sections: str) -> dict[str, Any]:
    """``seed`` and ``sections`` of ``config`` with task section ``task``'s overrides merged in.

    E.g. ``task_config(config, "vit_maps", "training")`` is the ViT's training config: the run's
    ``training`` with the keys of ``vit_maps.training`` replacing its own (nested mappings,
    such as ``sop.training``, merged key by key).
    """
    overrides = config.get(task, {})
    merged = {"seed": config["seed"]}
    for section in sections:
        merged[section] = _merged(config[section], overrides.get(section, {}))
    return merged


def _merged(base: Any, override: Any) -> Any:
    if not (isinstance(base, Mapping) and isinstance(override, Mapping)):
        return copy.deepcopy(override)
    out = copy.deepcopy(dict(base))
    for key, value in override.items():
        out[key] = _merged(base.get(key), value)
    return out


@functools.cache
def _validator() -> Any:
    """The schema's validator, filling in defaults as it goes.

    Snakemake's :func:`snakemake.utils.validate` does the same, but it reads and parses the
    schema file anew on each call, in pure-Python YAML: 0.5 s each, four times per workflow
    start and once or more per job. Here the file is parsed once per process (LibYAML when
    PyYAML has it), and a default is copied into the config, so that no config shares an
    object with the cached schema.
    """
    from jsonschema import Draft202012Validator, validators

    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    schema = yaml.load(SCHEMA_PATH.read_text(), Loader=loader)
    check_properties = Draft202012Validator.VALIDATORS["properties"]

    def fill_defaults_then_check(validator, properties, instance, subschema):
        if isinstance(instance, dict):
            for key, property_schema in properties.items():
                if "default" in property_schema and key not in instance:
                    instance[key] = copy.deepcopy(property_schema["default"])
        yield from check_properties(validator, properties, instance, subschema)

    filling = validators.extend(Draft202012Validator, {"properties": fill_defaults_then_check})
    return filling(schema)


def _schema_message(cause: Any) -> str:
    """One line for a :class:`jsonschema.ValidationError`: the key and what is wrong."""
    key = ".".join(str(p) for p in cause.absolute_path) or "(top level)"
    # A regular expression says little to most readers: the key's description says it in words.
    said = cause.schema.get("description") if cause.validator == "pattern" else None
    return f"config key '{key}' fails the schema: {cause.message}" + (f" ({said})" if said else "")


def _check_consistency(
    config: dict[str, Any], where: str | os.PathLike, given: frozenset[str] | None
) -> None:
    """Checks that span several keys, which JSON Schema cannot express.

    ``given``: the top-level keys the caller named (None: a whole config); a check that
    compares sections runs only when all of them were named.
    """

    def named(*sections: str) -> bool:
        return given is None or all(section in given for section in sections)

    for sections, check in _CHECKS:
        problem = check(config) if named(*sections) else None
        if problem:
            raise InputError(where, problem)


def _check_split(config: dict[str, Any]) -> str | None:
    split = config["ingest"]["split"]
    total = split["train"] + split["val"] + split["test"]
    if abs(total - 1.0) > 1e-6:
        return f"config key 'ingest.split' fractions sum to {total:g}, not 1"
    return None


def _check_level_names(config: dict[str, Any]) -> str | None:
    # Each level is a folder of the results tree: names must differ on case-insensitive
    # file systems too, and not take the name of a shared entry (results/patches.zarr, ...).
    names = [level["name"] for level in config["noise"]]
    seen: dict[str, str] = {}
    for name in names:
        other = seen.setdefault(name.casefold(), name)
        if other == name and names.count(name) > 1:
            return f"config key 'noise' repeats a level name, {name!r}: {names}"
        if other != name:
            return (
                f"config key 'noise' names levels {other!r} and {name!r}, one folder on a "
                "case-insensitive file system"
            )
    shared = {entry.casefold() for entry in layout.shared_entries()}
    taken = [name for name in names if name.casefold() in shared]
    if taken:
        return (
            f"config key 'noise' names a level {taken[0]!r}, which the results folder "
            f"uses for its own {sorted(layout.shared_entries())}"
        )
    return None


def _check_source(config: dict[str, Any]) -> str | None:
    if config["source"] == "cosmogrid" and not config["cosmogrid"]["root"]:
        return "config key 'cosmogrid.root' must be set when source is 'cosmogrid'"
    return None


def _check_mock(config: dict[str, Any]) -> str | None:
    nside = config["mock"]["nside"]
    lmax = config["mock"]["lmax"]
    if lmax is not None and lmax > 3 * nside - 1:
        return f"config key 'mock.lmax' = {lmax} exceeds 3 * nside - 1"
    if config["source"] == "mock":
        return _not_a_file("mock.root", config["mock"]["root"])
    return None


def _check_mock_bins(config: dict[str, Any]) -> str | None:
    if config["source"] != "mock":
        return None
    n_bins = config["mock"]["redshift"]["n_bins"]
    bad = [b for b in config["ingest"]["bins"] if b > n_bins]
    if bad:
        return f"config key 'ingest.bins' asks for bin(s) {bad} but the mock has {n_bins}"
    return None


def _check_galaxy_densities(config: dict[str, Any]) -> str | None:
    # A list gives one density per channel of the patches (noise.py); found at the noise step
    # otherwise, after the whole data stage.
    n_bins = len(config["ingest"]["bins"])
    for level in config["noise"]:
        density = level["n_gal_arcmin2"]
        if level["shape_noise"] and isinstance(density, list) and len(density) != n_bins:
            return (
                f"config key 'noise[{level['name']}].n_gal_arcmin2' lists {len(density)} "
                f"galaxy densities but 'ingest.bins' makes {n_bins} bins (one per bin, or a "
                "single total)"
            )
    return None


def _check_backbone_fits_patch(config: dict[str, Any]) -> str | None:
    # The networks check this themselves, but only when training starts, after the data stage.
    widths = config["backbone"]["widths"]
    kernel = config["backbone"]["kernel_size"]
    patch = config["ingest"]["patch_size"]
    smallest = smallest_input_size(len(widths), kernel)
    if patch >= smallest:
        return None
    kernels = [k for k in range(1, kernel) if smallest_input_size(len(widths), k) <= patch]
    other = f", or a 'backbone.kernel_size' of at most {kernels[-1]}" if kernels else ""
    return (
        f"config key 'ingest.patch_size' = {patch} is too small for the backbone (widths "
        f"{widths}, kernel {kernel}): the smallest valid patch is {smallest}{other}"
    )


def _check_sop_encoder(config: dict[str, Any]) -> str | None:
    blocks = config["sop"]["encoder_blocks"]
    n_blocks = len(config["backbone"]["widths"])
    if blocks > n_blocks:
        return (
            f"config key 'sop.encoder_blocks' = {blocks} exceeds the backbone's {n_blocks} "
            f"conv blocks ('backbone.widths' {config['backbone']['widths']})"
        )
    return None


def _check_sop_heads(config: dict[str, Any]) -> str | None:
    heads, d_model = config["sop"]["n_heads"], config["sop"]["d_model"]
    if d_model % heads:
        divisors = [n for n in range(1, d_model + 1) if d_model % n == 0]
        return (
            f"config key 'sop.n_heads' = {heads} does not divide 'sop.d_model' = {d_model}: "
            f"valid n_heads are {divisors[:12]}"
        )
    return None


def _check_sop_patch_tokens(config: dict[str, Any]) -> str | None:
    # SumOfParts lays a patch_tokens x patch_tokens grid over the pixels (segment tokens do
    # not use it); finer than one pixel per cell is refused when SOP is built.
    tokens, patch = config["sop"]["patch_tokens"], config["ingest"]["patch_size"]
    if config["sop"]["tokens"] == "patches" and tokens > patch:
        return (
            f"config key 'sop.patch_tokens' = {tokens} exceeds 'ingest.patch_size' = {patch}: "
            f"at most {patch} tokens per side"
        )
    return None


def _check_results(config: dict[str, Any]) -> str | None:
    if not config["results"].strip():
        # Path("") is the working folder: the workflow would spread its outputs over it.
        return "config key 'results' is empty: name the folder for the outputs (e.g. results)"
    return _not_a_file("results", config["results"])


def _check_mask_fractions(config: dict[str, Any]) -> str | None:
    low, high = config["training"]["mask_min_keep"], config["training"]["mask_max_keep"]
    if low > high:
        return (
            f"config key 'training.mask_min_keep' = {low} exceeds 'training.mask_max_keep' = {high}"
        )
    return None


def _check_vit_maps(config: dict[str, Any]) -> str | None:
    # The overrides must make valid sections, and the ViT's patches must tile the maps: found
    # here, not when the ViT's first job starts after the CNN's.
    levels = config["vit_maps"]["levels"]
    names = [level["name"] for level in config["noise"]]
    unknown = [level for level in levels or () if level not in names]
    if unknown:
        return f"config key 'vit_maps.levels' names unknown noise level(s) {unknown}: {names}"
    for section, override in config["vit_maps"].items():
        if section == "levels":
            continue
        try:
            with_defaults(
                section,
                _merged(config[section], override),
                where=f"config key 'vit_maps.{section}'",
            )
        except InputError as error:
            return str(error)
    patch, vit_patch = config["ingest"]["patch_size"], config["vit"]["patch_size"]
    if "vit_maps" in config["tasks"] and patch % vit_patch:
        return (
            f"config key 'vit.patch_size' = {vit_patch} does not divide 'ingest.patch_size' = "
            f"{patch}: the ViT's patches must tile the maps"
        )
    return None


def _check_scheduler_skip(config: dict[str, Any]) -> str | None:
    # Skipped files are noted in the job's memory, which a distributed worker does not share.
    if config["parallel"]["dask_scheduler"] and config["ingest"]["on_bad_map"] == "skip":
        return (
            "config key 'parallel.dask_scheduler' cannot be used with ingest.on_bad_map skip "
            "(the workers could not report the files they skip)"
        )
    return None


def _not_a_file(key: str, path: str) -> str | None:
    # Else the first job to write there fails with "Not a directory", after the jobs before it.
    if Path(path).exists() and not Path(path).is_dir():
        return f"config key '{key}' = {path!r} is a file, not a folder"
    return None


#: (sections read, check): each check returns the problem in words, or None.
_CHECKS = (
    (("ingest",), _check_split),
    (("noise",), _check_level_names),
    (("source",), _check_source),
    (("mock",), _check_mock),
    (("mock", "ingest"), _check_mock_bins),
    (("noise", "ingest"), _check_galaxy_densities),
    (("backbone", "ingest"), _check_backbone_fits_patch),
    (("sop", "backbone"), _check_sop_encoder),
    (("sop",), _check_sop_heads),
    (("sop", "ingest"), _check_sop_patch_tokens),
    (("results",), _check_results),
    (("training",), _check_mask_fractions),
    (("parallel", "ingest"), _check_scheduler_skip),
    (
        ("tasks", "vit_maps", "noise", "vit", "ingest", "training", "sop", "evaluation"),
        _check_vit_maps,
    ),
)
