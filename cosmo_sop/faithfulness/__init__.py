"""Faithfulness of attributions of a regression model: insertion, deletion, kept features.

Whether a model's prediction follows the ranking that an attribution gives its pixels (or, for
Sum-of-Parts, its groups): insertion and deletion curves, pixel by pixel or by groups
(:mod:`~cosmo_sop.faithfulness.curves`), the MSE of the model fed only its top pixels and the
sparsity of group attributions, all in one stream of model calls
(:mod:`~cosmo_sop.faithfulness.metrics`, on the engine of :mod:`~cosmo_sop.faithfulness.engine`),
with their records (:mod:`~cosmo_sop.faithfulness.results`), the substrates and rankings they
perturb with (:mod:`~cosmo_sop.faithfulness.ranks`: |attribution| ranking, seeded ties, per-token
aggregation, sparsity, SOP's groups' contributions), the table of several methods with its CSV
(:mod:`~cosmo_sop.faithfulness.table`) and the per-map scores with their cosmology-bootstrap
summary (:mod:`~cosmo_sop.faithfulness.summary`). The workflow's ``faithfulness`` step, which scores SOP
against the baselines of :mod:`cosmo_sop.attribution`, is :mod:`cosmo_sop.faithfulness.run`
(not imported here: it reads stores and trained models).
"""

from cosmo_sop.faithfulness.curves import (
    DEFAULT_FRACTIONS,
    grouped_insertion_deletion,
    insertion_deletion,
)
from cosmo_sop.faithfulness.metrics import (
    OUTPUT_NAMES,
    faithfulness_metrics,
    kept_features_mse,
    sop_sparsity,
)
from cosmo_sop.faithfulness.ranks import (
    contribution_sparsity,
    group_contributions,
    group_scores_from_importance,
    mass_fraction,
    pixel_ranks,
    ranking_importance,
    tie_order,
    token_aggregate,
)
from cosmo_sop.faithfulness.results import (
    BETTER,
    DELETION,
    GROUPED_DELETION,
    GROUPED_INSERTION,
    INSERTION,
    N_GROUPS,
    SPARSITY,
    Curve,
    CurvePair,
    KeptFeatures,
    Sparsity,
    kept_mse_name,
)
from cosmo_sop.faithfulness.substrates import make_substrate, substrate_prediction
from cosmo_sop.faithfulness.summary import Entry, per_map_scores, summarise, write_summary_csv
from cosmo_sop.faithfulness.table import faithfulness_table, write_table_csv

__all__ = [
    "BETTER",
    "DEFAULT_FRACTIONS",
    "Entry",
    "DELETION",
    "GROUPED_DELETION",
    "GROUPED_INSERTION",
    "INSERTION",
    "N_GROUPS",
    "OUTPUT_NAMES",
    "SPARSITY",
    "Curve",
    "CurvePair",
    "KeptFeatures",
    "Sparsity",
    "contribution_sparsity",
    "faithfulness_metrics",
    "faithfulness_table",
    "group_contributions",
    "group_scores_from_importance",
    "grouped_insertion_deletion",
    "insertion_deletion",
    "kept_features_mse",
    "kept_mse_name",
    "make_substrate",
    "mass_fraction",
    "per_map_scores",
    "pixel_ranks",
    "ranking_importance",
    "sop_sparsity",
    "substrate_prediction",
    "summarise",
    "tie_order",
    "token_aggregate",
    "write_summary_csv",
    "write_table_csv",
]
