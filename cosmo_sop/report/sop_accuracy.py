"""Report content on SOP's accuracy: its error against the backbone's with CIs, the floor under
it, and the trade-off of group size against error and sparsity (``sop.sweep_keep_fractions``).

Input: the test metrics of the models (:func:`cosmo_sop.report.inputs.read_test_metrics`), where
SOP's entries carry the records ``versus_backbone`` (MSE ratio with cosmology-bootstrap CIs),
``floor`` (the backbone on random groups) and ``groups`` (tokens, tau, sparsity).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from cosmo_sop.figures.labels import MODEL_LABELS
from cosmo_sop.report.inputs import NAMES
from cosmo_sop.report.tables import table, with_interval

Metrics = Mapping[str, Mapping[str, Any]]


def _sop_entries(metrics: Metrics) -> list[tuple[str, Mapping[str, Any]]]:
    """The main SOP and every swept SOP, by increasing tau (main SOP first on ties)."""
    entries = [
        (label, entry)
        for label, entry in metrics.items()
        if isinstance(entry.get("groups"), Mapping) and "keep_fraction" in entry["groups"]
    ]
    main = MODEL_LABELS["sop"]
    return sorted(entries, key=lambda e: (float(e[1]["groups"]["keep_fraction"]), e[0] != main))


def ratio_interval(entry: Mapping[str, Any], name: str) -> str:
    """``"2.31 [1.90, 2.80]"``: SOP's test MSE over the backbone's for ``name``, with its CI."""
    record = (entry.get("versus_backbone") or {}).get(name)
    if not isinstance(record, Mapping):
        return "—"
    return with_interval(record["ratio"], record["ci_low"], record["ci_high"])


def floor_table(metrics: Metrics) -> dict[str, Any] | None:
    """Backbone on the full map, on one random group, on the uniform average of m random
    groups, and the trained SOP: standardised test MSE per parameter."""
    sop, backbone = metrics.get(MODEL_LABELS["sop"]), metrics.get(MODEL_LABELS["backbone"])
    if sop is None or backbone is None or not isinstance(sop.get("floor"), Mapping):
        return None
    floor = sop["floor"]
    tau, m = floor["keep_fraction"], floor["n_groups"]
    rows = [
        ["backbone, full map", *(backbone["mse_standardised"][n] for n in NAMES)],
        [f"backbone, one random group (τ = {tau:g})", *(floor["single_group"][n] for n in NAMES)],
        [
            f"uniform average of the backbone on {m} random groups",
            *(floor["uniform_average"][n] for n in NAMES),
        ],
        ["SOP (trained generator and selector)", *(sop["mse_standardised"][n] for n in NAMES)],
    ]
    return table([], rows)


def floor_comparison(metrics: Metrics) -> dict[str, bool] | None:
    """Per parameter: True where the trained SOP's test MSE is below the uniform average over
    random groups (it learnt groups and weights worth more than chance), False where not."""
    sop = metrics.get(MODEL_LABELS["sop"])
    if sop is None or not isinstance(sop.get("floor"), Mapping):
        return None
    floor = sop["floor"]["uniform_average"]
    return {n: bool(sop["mse_standardised"][n] < floor[n]) for n in NAMES}


def sweep_table(metrics: Metrics) -> dict[str, Any] | None:
    """Per group size tau: SOP's MSE, its ratio to the backbone with CI, the random-group floor,
    and the sparsity of its explanations. None without a sweep."""
    entries = _sop_entries(metrics)
    if len(entries) < 2:
        return None
    rows = []
    for _, entry in entries:
        groups, floor = entry["groups"], entry.get("floor") or {}
        rows.append(
            [
                groups["keep_fraction"],
                *(entry["mse_standardised"][n] for n in NAMES),
                *(ratio_interval(entry, n) for n in NAMES),
                *((floor.get("uniform_average") or {}).get(n) for n in NAMES),
                *((groups.get("sparsity") or {}).get(n) for n in NAMES),
                *(groups["nonzero_groups_per_map"][n] for n in NAMES),
            ]
        )
    return table([], rows)


def sop_accuracy(metrics: Metrics) -> dict[str, Any]:
    """The template's data: ratio CIs of the main SOP, the floor table, the sweep table, and
    SOP's tokens and maps (None where not recorded)."""
    sop = metrics.get(MODEL_LABELS["sop"])
    versus = (sop or {}).get("versus_backbone")
    groups = (sop or {}).get("groups") or {}
    return {
        "intervals": None if not versus else {n: ratio_interval(sop, n) for n in NAMES},
        "n_cosmologies": None if not versus else versus.get("n_cosmologies"),
        "n_maps": None if not versus else versus.get("n_maps"),
        "tokens": groups.get("tokens"),
        "sparsity_mass": groups.get("sparsity_mass"),
        "floor": floor_table(metrics),
        "below_floor": floor_comparison(metrics),
        "sweep": sweep_table(metrics),
    }
