"""What counts as a void or a cluster, and what the SOP paper finds about them.

A :class:`StructureDefinition` is a name, a kind (``void`` or ``cluster``) and one rule on the
group's pixels of the sigma map (:func:`cosmo_sop.structures.sigma_map`), in units of the map's
standard deviation:

- ``mean_above: L`` (clusters) or ``mean_below: L`` (voids): the mean of the group's pixels is
  strictly above / below L sigma;
- ``fraction_above: L`` with ``min_fraction: f`` (clusters) or ``fraction_below: L`` with
  ``min_fraction: f`` (voids): *at least* a fraction f of the group's pixels lie strictly above
  / below L sigma (``>= f``, as the SOP authors' purity code counts).

Clusters use ``*_above`` and voids ``*_below`` rules; anything else is refused as a likely
mistake. Config form (one dict per definition; see :func:`parse_definitions`)::

    -{name: void_paper, kind: void, mean_below: 0.0}
    -{name: cluster_authors, kind: cluster, fraction_above: 3.0, min_fraction: 0.015}

The default definitions (:data:`DEFAULT_DEFINITIONS`, the config schema's
``structures.definitions``) are two pairs, named by where they come from:

- the SOP paper's *mean* rules: ``void_paper`` (mean < 0) and ``cluster_paper`` (mean > 2 sigma);
- the SOP authors' *fraction* rules, from their purity code: ``void_authors`` (at least 60 % of
  the group's pixels below 0) and ``cluster_authors`` (at least 1.5 % above 3 sigma). Purity
  (:mod:`~cosmo_sop.structures.purity`) and the figures use these two
  (:data:`PURITY_VOID`, :data:`PURITY_CLUSTER`).

Why the paper's cluster rule is (nearly) always empty for SOP's groups
---------------------------------------------------------------------
On a map of zero mean and unit variance, a group holding a fraction p of the pixels has mean
``mu`` with ``p mu + (1 - p) mu' = 0`` for the mean ``mu'`` of the rest, and the variance bounds
``p mu^2 + (1 - p) mu'^2 <= 1``; together ``mu <= sqrt((1 - p) / p)`` sigma (:func:`mean_bound`):
exactly 2 sigma for p = 0.2, reached only by a map that is a two-valued step. SOP's groups hold
``keep_fraction`` of the *tokens*, so their share of the pixels, and the bound, vary with the
tokens' sizes (verdicts.json records the range, ``group_pixels``). The
group of the highest 20 % of the pixels of a Gaussian field averages ``phi(z) / p`` = 1.40 sigma
(z the 80th percentile), and the mock's lognormal patches give about 1.5 sigma; so no 20 % group
passes ``mean > 2 sigma``, and ``cluster_paper`` reports an empty class (the verdict
``"no_groups"``) rather than an invented ratio. The authors' fraction rule asks instead for halo
cores inside the group: 1.5 % of its pixels above 3 sigma, about 1.7 to 4 times a whole map's
share (0.9 % of the pixels of noiseless mock patches, 0.4 % with stage-3 noise).

The paper's void rule (mean < 0) holds for about half of all *random* groups (the field is
skewed: its median lies below its mean); purities and weight ratios are therefore compared with
null controls (:mod:`cosmo_sop.structures.nulls`), not with 0.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import xarray as xr

from cosmo_sop.config import defaults
from cosmo_sop.errors import InputError

Kind = Literal["void", "cluster"]
Statistic = Literal["mean", "fraction"]

KINDS: tuple[str, ...] = ("void", "cluster")
#: The parameter names of the model outputs, in output order.
OUTPUTS: tuple[str, ...] = ("Om", "s8")

#: What the SOP paper (You et al. 2025) finds, per kind: the output whose weight is the larger
#: (a weight ratio outputs[0] / outputs[1] above 1 means ``"Om"``), and the finding in words.
#: The one place these findings are written; verdicts and the report read them from here.
PAPER_FINDINGS: dict[str, dict[str, str]] = {
    "void": {"heavier": "Om", "text": "voids weigh more for Om"},
    "cluster": {"heavier": "s8", "text": "clusters weigh more for s8"},
}

#: Definitions used to call a part void / cluster / neither when computing purity and drawing
#: the figures: the SOP authors' fraction rules (see the module notes).
PURITY_VOID = "void_authors"
PURITY_CLUSTER = "cluster_authors"

_RULE_KEYS = ("mean_above", "mean_below", "fraction_above", "fraction_below")
_CONFIG_KEYS = frozenset(("name", "kind", "min_fraction", *_RULE_KEYS))


def mean_bound(pixel_fraction: Any) -> np.ndarray:
    """The largest mean, in sigma, of a group holding ``pixel_fraction`` p of a map of zero mean
    and unit variance: ``sqrt((1 - p) / p)`` (see the module notes; 2 for p = 0.2). SOP's groups
    hold ``keep_fraction`` of the *tokens*, whose pixel share varies with the tokens' sizes, so
    the bound is each group's own."""
    p = np.asarray(pixel_fraction, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.sqrt((1.0 - p) / p)


def is_finite_number(value: Any) -> bool:
    """True for a finite int or float (numpy ones too), False for bools and anything else."""
    return (
        isinstance(value, (int, float, np.integer, np.floating))
        and not isinstance(value, bool)
        and math.isfinite(float(value))
    )


@dataclass(frozen=True)
class StructureDefinition:
    """One way of calling a group a void or a cluster.

    Attributes
    ----------
    name
        Identifier used as the coordinate of the ``definition`` dimension.
    kind
        ``"void"`` or ``"cluster"``.
    statistic
        ``"mean"``: the mean of the group's sigma-map pixels is compared with ``level``.
        ``"fraction"``: the fraction of its pixels strictly beyond ``level`` must be at least
        ``min_fraction``.
    level
        Threshold in units of the map's standard deviation (sigma). Clusters: above it;
        voids: below it.
    min_fraction
        For ``statistic="fraction"``: the fraction of pixels beyond ``level`` must reach this
        (``>=``), in (0, 1). None for ``"mean"``.
    """

    name: str
    kind: Kind
    statistic: Statistic
    level: float
    min_fraction: float | None = None

    def __post_init__(self) -> None:
        where = f"structure definition {self.name!r}"
        if not isinstance(self.name, str) or not self.name:
            raise InputError(
                "structure definition", f"name must be a non-empty string, got {self.name!r}"
            )
        if self.kind not in KINDS:
            raise InputError(where, f"kind must be one of {KINDS}, got {self.kind!r}")
        if self.statistic not in ("mean", "fraction"):
            raise InputError(
                where, f"statistic must be 'mean' or 'fraction', got {self.statistic!r}"
            )
        if not is_finite_number(self.level):
            raise InputError(where, f"level must be a finite number of sigma, got {self.level!r}")
        if self.statistic == "fraction":
            f = self.min_fraction
            # 0 would make every group a member: refused as a likely mistake
            if not is_finite_number(f) or not 0.0 < f < 1.0:
                raise InputError(where, f"min_fraction must be a number in (0, 1), got {f!r}")
        elif self.min_fraction is not None:
            raise InputError(where, "min_fraction only goes with a fraction_above/below rule")
        # plain floats, so that definitions compare and serialise the same however they were given
        object.__setattr__(self, "level", float(self.level))
        if self.min_fraction is not None:
            object.__setattr__(self, "min_fraction", float(self.min_fraction))

    @property
    def direction(self) -> str:
        """``"above"`` for clusters, ``"below"`` for voids."""
        return "above" if self.kind == "cluster" else "below"

    @property
    def rule(self) -> str:
        """The rule in words, e.g. ``"mean > 2σ"`` or ``"≥ 60% of pixels < 0σ"``."""
        sign = ">" if self.direction == "above" else "<"
        if self.statistic == "mean":
            return f"mean {sign} {self.level:g}σ"
        return f"≥ {100 * self.min_fraction:g}% of pixels {sign} {self.level:g}σ"

    def to_config(self) -> dict[str, Any]:
        """The config dict that :func:`parse_definitions` turns back into this definition."""
        out: dict[str, Any] = {
            "name": self.name,
            "kind": self.kind,
            f"{self.statistic}_{self.direction}": self.level,
        }
        if self.statistic == "fraction":
            out["min_fraction"] = self.min_fraction
        return out

    def applies(self, stats: xr.Dataset) -> xr.DataArray:
        """Boolean membership of every region of ``stats`` (see
        :func:`cosmo_sop.structures.group_statistics`).

        Empty regions (no pixel) and invalid groups are never members.
        """
        if self.statistic == "mean":
            mean = stats["mean_sigma"]
            member = mean > self.level if self.direction == "above" else mean < self.level
        else:
            fractions = stats[f"fraction_{self.direction}"]
            dim = f"{self.direction}_sigma"
            if self.level not in fractions[dim].values:
                raise InputError(
                    f"structure definition {self.name!r}",
                    f"the statistics hold no fraction {self.direction} {self.level:g} sigma; "
                    "compute them with this definition among `definitions`",
                )
            # ">=": the authors' "at least"; the fraction is count / pixels, a correctly rounded
            # division, so a group exactly at the threshold (3 of 200 pixels, 0.015) is a member
            member = fractions.sel({dim: self.level}, drop=True) >= self.min_fraction
        member = member & (stats["pixels"] > 0)
        if "valid" in stats:
            member = member & stats["valid"]
        return member


def _parse_one(item: Any, at: str) -> StructureDefinition:
    """One definition from its config form; ``at`` names it in errors."""
    if not isinstance(item, Mapping):
        raise InputError(at, f"must be a mapping, got {item!r}")
    unknown = sorted(set(item) - _CONFIG_KEYS)
    if unknown:
        raise InputError(at, f"unknown key(s) {unknown}; allowed: {sorted(_CONFIG_KEYS)}")
    for key in ("name", "kind"):
        if key not in item:
            raise InputError(at, f"missing key {key!r}")
    rules = [key for key in _RULE_KEYS if key in item]
    if len(rules) != 1:
        raise InputError(at, f"needs exactly one of {list(_RULE_KEYS)}, got {rules or 'none'}")
    statistic, direction = rules[0].split("_")
    kind = item["kind"]
    if kind in KINDS and direction != ("above" if kind == "cluster" else "below"):
        wanted = (
            "mean_above or fraction_above" if kind == "cluster" else "mean_below or fraction_below"
        )
        raise InputError(at, f"a {kind} is defined by {wanted}, not {rules[0]}")
    if statistic == "fraction" and "min_fraction" not in item:
        raise InputError(at, f"{rules[0]} needs min_fraction (the fraction of pixels to exceed)")
    try:
        return StructureDefinition(
            name=item["name"],
            kind=kind,
            statistic=statistic,
            level=item[rules[0]],
            min_fraction=item.get("min_fraction"),
        )
    except InputError as exc:
        raise InputError(at, exc.problem) from None


def parse_definitions(
    items: Sequence[Mapping[str, Any]] | None,
    where: str = "config key 'structures.definitions'",
) -> tuple[StructureDefinition, ...]:
    """Structure definitions from their config form; None gives :data:`DEFAULT_DEFINITIONS`.

    Each item is a mapping with ``name``, ``kind`` (``void`` | ``cluster``) and exactly one rule
    key: ``mean_above`` / ``fraction_above`` for clusters, ``mean_below`` / ``fraction_below``
    for voids (a level in sigma); a fraction rule also needs ``min_fraction`` in (0, 1).
    Names must be unique.

    Raises
    ------
    InputError
        Naming ``where`` and the item, for any malformed item.
    """
    if items is None:
        return DEFAULT_DEFINITIONS
    if isinstance(items, (str, bytes, Mapping)) or not isinstance(items, Sequence) or not items:
        raise InputError(where, f"must be a non-empty list of definitions, got {items!r}")
    definitions = tuple(_parse_one(item, f"{where}[{i}]") for i, item in enumerate(items))
    names = [d.name for d in definitions]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise InputError(where, f"duplicate definition name(s) {duplicates}")
    return definitions


#: The default definitions: the config schema's ``structures.definitions``, parsed.
DEFAULT_DEFINITIONS: tuple[StructureDefinition, ...] = parse_definitions(
    defaults("structures.definitions")
)


def checked_definitions(
    definitions: Sequence[Mapping[str, Any] | StructureDefinition] | None,
) -> tuple[StructureDefinition, ...]:
    """Definitions in config form or as :class:`StructureDefinition` (None: the defaults) that
    include the void :data:`PURITY_VOID` and the cluster :data:`PURITY_CLUSTER`, which purity
    and the figures need.

    Raises
    ------
    InputError
        Naming the config key ``structures.definitions``, if a definition is malformed or one
        of the two is missing.
    """
    if definitions is not None and all(isinstance(d, StructureDefinition) for d in definitions):
        parsed = tuple(definitions)
    else:
        parsed = parse_definitions(definitions)
    kinds = {d.name: d.kind for d in parsed}
    for name, kind in ((PURITY_VOID, "void"), (PURITY_CLUSTER, "cluster")):
        if kinds.get(name) != kind:
            raise InputError(
                "config key 'structures.definitions'",
                f"purity and the figures need a {kind} definition named {name!r}; got {kinds}",
            )
    return parsed
