"""The options of a faithfulness evaluation: the config schema's defaults filled in, checked.

Methods are ``"sop"`` and the keys of :data:`cosmo_sop.attribution.METHODS`; the keyword options
of each baseline are those of :func:`cosmo_sop.attribution.attribute`, with ``n_samples``
(``evaluation.n_samples``) for the perturbation methods and the evaluation's ``seed`` for the
stochastic ones.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cosmo_sop.attribution.registry import METHODS, SOP
from cosmo_sop.config import defaults
from cosmo_sop.errors import InputError
from cosmo_sop.structures.classes import classification_smoothing
from cosmo_sop.structures.definitions import (
    StructureDefinition,
    checked_definitions,
    is_finite_number,
)

#: Methods compared by default: the config schema's ``evaluation.methods`` (SOP and every
#: baseline of :data:`~cosmo_sop.attribution.METHODS`).
DEFAULT_METHODS: tuple[str, ...] = tuple(defaults("evaluation")["methods"])
#: The perturbation methods, whose number of perturbed maps per map is ``evaluation.n_samples``.
PERTURBATION_METHODS: tuple[str, ...] = ("kernel_shap", "lime")


@dataclass(frozen=True)
class Settings:
    """The checked options of one evaluation, the schema's defaults filled in."""

    methods: list[str]
    skipped: dict[str, str]
    options: dict[str, dict[str, Any]]
    n_maps: int
    keep_fraction: float
    seed: int
    definitions: tuple[StructureDefinition, ...]
    n_boot: int
    ranking: str
    token_reduce: str
    sparsity_mass: float
    n_fractions: int
    own_model: bool
    #: Gaussian sigma (pixels) of the sigma map the purity cells are classified on.
    smoothing_pixels: float


def settings_of(
    methods: Sequence[str] | None,
    n_maps: int | None,
    keep_fraction: float | None,
    n_samples: int | None,
    method_options: Mapping[str, Mapping[str, Any]] | None,
    seed: int | None,
    definitions: Sequence[Mapping[str, Any] | StructureDefinition] | None,
    n_boot: int | None,
    segments_store: str | os.PathLike | None,
    smoothing_pixels: float | None = None,
    **scoring: Any,
) -> Settings:
    """The options of :func:`~cosmo_sop.faithfulness.run.faithfulness_evaluation`, checked,
    None filled with the schema's default; the methods that need the segments store are
    skipped, with a warning, without it. ``scoring`` holds the other keys of ``evaluation``
    (``ranking``, ``token_reduce``, ``sparsity_mass``, ``n_fractions``, ``own_model``), None
    for the schema's default; ``n_boot`` is ``evaluation.n_boot``; ``smoothing_pixels`` is
    the structures step's (None: as the schema's defaults resolve it,
    :func:`~cosmo_sop.structures.classes.classification_smoothing`).

    Raises
    ------
    InputError
        Naming the argument: an unknown method or option, a bad ``n_maps``, definitions that
        lack the void and the cluster that purity needs.
    """
    evaluation = defaults("evaluation")
    methods = _check_methods(evaluation["methods"] if methods is None else methods)
    definitions = checked_definitions(definitions)
    n_maps = evaluation["n_maps"] if n_maps is None else n_maps
    if isinstance(n_maps, bool) or not isinstance(n_maps, int) or n_maps < 1:
        raise InputError("argument 'n_maps'", f"must be a positive integer, got {n_maps!r}")
    seed = defaults("seed") if seed is None else seed
    skipped: dict[str, str] = {}
    if segments_store is None:
        for method in [m for m in methods if m != SOP and METHODS[m].needs_segments]:
            skipped[method] = "needs the segments store (not given)"
        if skipped:
            warnings.warn(
                f"faithfulness: skipping {', '.join(skipped)}, which need the segments store",
                UserWarning,
                stacklevel=3,
            )
        methods = [m for m in methods if m not in skipped]
    n_samples = evaluation["n_samples"] if n_samples is None else n_samples
    return Settings(
        methods=methods,
        skipped=skipped,
        options=_method_options(methods, method_options, n_samples, seed),
        n_maps=n_maps,
        keep_fraction=evaluation["keep_fraction"] if keep_fraction is None else keep_fraction,
        seed=seed,
        definitions=definitions,
        n_boot=evaluation["n_boot"] if n_boot is None else n_boot,
        **_scoring(evaluation, scoring),
        smoothing_pixels=_smoothing(smoothing_pixels),
    )


def _smoothing(smoothing_pixels: float | None) -> float:
    """The purity cells' smoothing, checked; None: the schema's defaults resolved."""
    if smoothing_pixels is None:
        return classification_smoothing()
    if not is_finite_number(smoothing_pixels) or smoothing_pixels < 0:
        raise InputError(
            "argument 'smoothing_pixels'", f"must be a finite number >= 0, got {smoothing_pixels!r}"
        )
    return float(smoothing_pixels)


def _scoring(evaluation: Mapping[str, Any], given: Mapping[str, Any]) -> dict[str, Any]:
    """The scoring keys of ``evaluation``, None or missing filled from the schema, checked."""
    keys = ("ranking", "token_reduce", "sparsity_mass", "n_fractions", "own_model")
    unknown = sorted(set(given) - set(keys))
    if unknown:
        raise InputError("faithfulness options", f"unknown {unknown}; valid: {list(keys)}")
    out = {k: evaluation[k] if given.get(k) is None else given[k] for k in keys}
    choices = {"ranking": ("absolute", "signed"), "token_reduce": ("mean", "sum")}
    for key, valid in choices.items():
        if out[key] not in valid:
            raise InputError(f"argument {key!r}", f"must be one of {valid}, got {out[key]!r}")
    if not 0.0 < float(out["sparsity_mass"]) <= 1.0:
        raise InputError(
            "argument 'sparsity_mass'", f"must be in (0, 1], got {out['sparsity_mass']!r}"
        )
    if int(out["n_fractions"]) < 2:
        raise InputError("argument 'n_fractions'", f"must be >= 2, got {out['n_fractions']!r}")
    return out


def _check_methods(methods: Sequence[str]) -> list[str]:
    if isinstance(methods, str) or not methods:
        raise InputError(
            "argument 'methods'", f"must be a non-empty list of names, got {methods!r}"
        )
    methods = list(dict.fromkeys(methods))
    unknown = [m for m in methods if m != SOP and m not in METHODS]
    if unknown:
        raise InputError("argument 'methods'", f"unknown {unknown}; valid: {[SOP, *METHODS]}")
    return methods


def _method_options(
    methods: Sequence[str],
    given: Mapping[str, Mapping[str, Any]] | None,
    n_samples: int,
    seed: int,
) -> dict[str, dict[str, Any]]:
    """Keyword options of every baseline in ``methods``: ``n_samples`` for the perturbation
    methods, then the given ones, then ``seed`` for the stochastic methods unless given."""
    given = dict(given or {})
    unknown = sorted(set(given) - {SOP, *METHODS})
    if unknown:
        raise InputError("argument 'method_options'", f"unknown method(s) {unknown}")
    if SOP in given and given[SOP]:
        raise InputError("argument 'method_options'", "SOP's attribution takes no options")
    options = {}
    for method in methods:
        if method == SOP:
            continue
        samples = {"n_samples": n_samples} if method in PERTURBATION_METHODS else {}
        merged = {**samples, **dict(given.get(method, {}))}
        if METHODS[method].stochastic:
            merged.setdefault("seed", int(seed))
        accepted = METHODS[method].options
        bad = sorted(set(merged) - set(accepted))
        if bad:
            raise InputError(
                f"method_options[{method!r}]",
                f"unknown option(s) {bad}; accepted: {list(accepted)}",
            )
        options[method] = merged
    return options
