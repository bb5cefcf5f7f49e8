"""The HTML report of a run: every step's results on one self-contained page.

``build`` reads a results folder and fills the Jinja2 template ``template.html.j2`` with plain
data: ``inputs`` reads and checks the step outputs, ``sections`` turns them into the content of
each section, ``tables`` formats numbers, tables and figures, and ``verdicts`` writes the
sentences and counts of the void/cluster verdict records. The workflow's ``report`` rule calls
:func:`write_report`.
"""

from cosmo_sop.report.build import write_report
from cosmo_sop.report.inputs import read_test_metrics
from cosmo_sop.report.sections import sop_backbone_ratio
from cosmo_sop.report.verdicts import verdict_sentence, verdict_summary

__all__ = [
    "read_test_metrics",
    "sop_backbone_ratio",
    "verdict_sentence",
    "verdict_summary",
    "write_report",
]
