"""Voids and clusters among Sum-of-Parts groups: classify them, weigh them, compare with the paper.

The SOP paper (You et al. 2025, Sec. "cosmology") reads its CosmoGrid groups as voids and
clusters and finds that voids carry more of the weight for Omega_m and clusters more for sigma_8.
This subpackage makes that reading reproducible, with any number of definitions in one run and
bootstrap uncertainties: :mod:`~cosmo_sop.structures.definitions` says what a void or a cluster
is (and holds the paper's findings), :mod:`~cosmo_sop.structures.classes` classifies groups on
each map's sigma map, :mod:`~cosmo_sop.structures.weights` weighs the classes (with intervals
from :mod:`~cosmo_sop.structures.bootstrap`) and gives verdict records,
:mod:`~cosmo_sop.structures.purity` measures how cleanly a map's top parts (SOP's groups, or the
cells of a pixel attribution, :mod:`~cosmo_sop.structures.cells`) fall into one class,
:mod:`~cosmo_sop.structures.findings` tests each class against the null controls of
:mod:`~cosmo_sop.structures.nulls`, paired on the same bootstrap draws, and :mod:`~cosmo_sop.structures.run` is the workflow's
``structures`` step (neither nulls nor run is imported here: they need PyTorch).
"""

from cosmo_sop.structures.bootstrap import bootstrap_sums
from cosmo_sop.structures.cells import attribution_cells, cell_statistics
from cosmo_sop.structures.classes import (
    classification_smoothing,
    classify,
    group_labels,
    group_statistics,
    sigma_map,
)
from cosmo_sop.structures.definitions import (
    DEFAULT_DEFINITIONS,
    KINDS,
    OUTPUTS,
    PAPER_FINDINGS,
    PURITY_CLUSTER,
    PURITY_VOID,
    StructureDefinition,
    checked_definitions,
    parse_definitions,
)
from cosmo_sop.structures.findings import HYPOTHESES, assess, paired_difference, with_nulls
from cosmo_sop.structures.purity import (
    cell_purity,
    method_purities,
    purity_table,
    sop_pixel_importance,
    sop_purity,
    top_groups,
)
from cosmo_sop.structures.weights import (
    OUTCOMES,
    class_weights,
    verdict,
    verdicts,
    weight_table,
)

__all__ = [
    "DEFAULT_DEFINITIONS",
    "KINDS",
    "OUTCOMES",
    "OUTPUTS",
    "PAPER_FINDINGS",
    "PURITY_CLUSTER",
    "PURITY_VOID",
    "StructureDefinition",
    "HYPOTHESES",
    "assess",
    "attribution_cells",
    "bootstrap_sums",
    "cell_purity",
    "cell_statistics",
    "checked_definitions",
    "class_weights",
    "classification_smoothing",
    "classify",
    "group_labels",
    "group_statistics",
    "method_purities",
    "paired_difference",
    "parse_definitions",
    "purity_table",
    "sigma_map",
    "sop_pixel_importance",
    "sop_purity",
    "top_groups",
    "verdict",
    "verdicts",
    "weight_table",
    "with_nulls",
]
