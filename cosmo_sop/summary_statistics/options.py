"""The options of the summary-statistics analysis: the schema's ``summary_statistics`` section.

The schema (``cosmo_sop/schemas/config.schema.yaml``) states every option and its default;
:func:`resolve_summary_config` fills them in for direct library calls exactly as the workflow's
config loader does, and adds the checks that span several keys.
"""

from __future__ import annotations

import copy
import functools
import json
import math
from collections.abc import Mapping
from typing import Any

from cosmo_sop.config import defaults, with_defaults
from cosmo_sop.errors import InputError

#: The config section of the analysis.
SECTION = "summary_statistics"


def resolve_summary_config(options: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The options of the analysis with the schema's defaults filled in, checked.

    Parameters
    ----------
    options
        Keys of the ``summary_statistics`` config section (any subset). A single regressor name
        stands for a list of one, a tuple for a list. ``seed`` None (the schema's default)
        becomes the schema's master seed, as in the workflow, which passes its master seed.

    Returns
    -------
    dict
        Every key of the section, in the schema's order (the order ``summary_statistics.json``
        records them in, whatever the order of ``options``).

    Raises
    ------
    InputError
        Naming ``summary_statistics.<key>`` for an unknown key or a bad value.
    """
    # Lists for tuples (JSON Schema arrays are lists), one name for a list of one.
    options = {k: list(v) if isinstance(v, tuple) else v for k, v in dict(options or {}).items()}
    if isinstance(options.get("regressors"), str):
        options["regressors"] = [options["regressors"]]
    # Validating against the schema takes tens of milliseconds, and the feature computation
    # resolves its options once per chunk of maps: the same options are resolved once.
    try:
        key = json.dumps(options, sort_keys=True)
    except (TypeError, ValueError):  # numpy integers and the like: no cache
        return _resolve(options)
    return copy.deepcopy(_resolved(key))


@functools.lru_cache(maxsize=32)
def _resolved(options_json: str) -> dict[str, Any]:
    return _resolve(json.loads(options_json))


def _resolve(options: dict[str, Any]) -> dict[str, Any]:
    known = defaults(SECTION)
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise InputError(f"{SECTION}.{unknown[0]}", f"unknown option (known: {', '.join(known)})")
    checked = with_defaults(SECTION, options)
    cfg = {key: checked[key] for key in known}
    _check_across_keys(cfg)
    if cfg["seed"] is None:
        cfg["seed"] = defaults("seed")
    # Plain Python numbers, so that the recorded options read the same whatever the caller gave.
    cfg["hidden"] = [int(h) for h in cfg["hidden"]]
    cfg["ridge_alphas"] = [float(a) for a in cfg["ridge_alphas"]]
    return cfg


def _check_across_keys(cfg: Mapping[str, Any]) -> None:
    """What JSON Schema cannot say: finite numbers, a non-empty height range, distinct
    regressors."""
    for key, value in cfg.items():
        if isinstance(value, float) and not math.isfinite(value):
            raise InputError(f"{SECTION}.{key}", f"must be a finite number, got {value!r}")
    if cfg["snr_max"] <= cfg["snr_min"]:
        raise InputError(f"{SECTION}.snr_step", "need snr_step > 0 and snr_max > snr_min")
    regressors = cfg["regressors"]
    if len(set(regressors)) < len(regressors):
        raise InputError(f"{SECTION}.regressors", f"must be distinct names, got {regressors!r}")
