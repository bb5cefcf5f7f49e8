"""Figures of cosmo-sop, drawn on matplotlib.figure.Figure (no pyplot state).

One module per figure family: ``mock`` (the mock CosmoGrid), ``patches`` and ``segments`` (the
data stage), ``training`` (learning curves), ``predictions`` (predicted vs true, test error per
noise level), ``faithfulness`` (insertion and deletion curves) and ``structures`` (weights of
void and cluster groups); ``labels`` names the parameters and models for all of them and for
the report. Each figure is written with :func:`save_figure`, as PNG and PDF. The figure
modules are imported from their own module (``from cosmo_sop.figures.predictions import
plot_predicted_vs_true``), so that drawing one figure does not import every stage.
"""

from __future__ import annotations

import os
from pathlib import Path

from matplotlib.figure import Figure

from cosmo_sop.storage import atomic_path

__all__ = ["save_figure"]


def save_figure(
    fig: Figure, out_png: str | os.PathLike, *, pdf: bool = True, dpi: int = 150
) -> Path:
    """Write ``fig`` atomically as PNG (for reports) and, if ``pdf``, as PDF beside it (for
    papers); returns ``out_png``.

    Parameters
    ----------
    fig
        The figure.
    out_png
        PNG file to write; the PDF goes beside it with the suffix ``.pdf``.
    pdf
        Also write the PDF.
    dpi
        Resolution of the PNG, dots per inch.
    """
    out_png = Path(out_png)
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi)
    if pdf:
        with atomic_path(out_png.with_suffix(".pdf")) as tmp:
            fig.savefig(tmp, format="pdf")
    return out_png
