"""How figures and the report name things: the parameters and the models.

One place for display names, so that an axis, a legend and a table cell call a parameter or a
model the same way. Plain strings only (matplotlib mathtext, HTML fragments): no figure code.
"""

from __future__ import annotations

#: The parameters as axis labels (matplotlib mathtext).
TEX = {"Om": r"$\Omega_{\rm m}$", "s8": r"$\sigma_8$"}
#: The parameters as the structure figures set them (italic m). Kept apart from :data:`TEX`
#: only so that those figures stay byte-identical; use :data:`TEX` in new figures.
TEX_ITALIC = {"Om": r"$\Omega_m$", "s8": r"$\sigma_8$"}
#: The parameters in the HTML report (markup: the report inserts it unescaped).
HTML = {"Om": "Ω<sub>m</sub>", "s8": "σ<sub>8</sub>"}

#: Run folders under ``<level>/models`` in display order, and their names in figures and tables.
MODEL_LABELS: dict[str, str] = {"backbone": "CNN backbone", "xdnn": "X-DNN", "sop": "SOP"}
#: Display name of a summary-statistics regressor (``predicted_<kind>`` in the .npz).
SUMMARY_LABEL = "Summary statistics ({})"


def tex(name: str) -> str:
    """Axis label of parameter ``name`` (the name itself for a parameter without one)."""
    return TEX.get(name, name)


def summary_label(kind: str) -> str:
    """Display name of the summary-statistics regressor ``kind`` (``"mlp"``, ``"ridge"``)."""
    return SUMMARY_LABEL.format(kind)
