"""A tiny end-to-end run of the bert_text task: fine-tuning, SOP, ERASER metrics, outputs."""

from __future__ import annotations

import json

import pytest
from fixtures.workflow import tiny_task_settings

from cosmo_sop.tasks.text.run import run

TINY = {
    "seed": 5,
    "training": {"progress": False, "device": "cpu", "threads": 1},
    "bert_text": tiny_task_settings()["bert_text"],
}


@pytest.mark.slow
def test_tiny_run_writes_task_metrics(tmp_path):
    result = run(TINY, tmp_path)
    written = json.loads((tmp_path / "task_metrics.json").read_text())
    assert written["task"] == "bert_text" and written["summary"] == result["summary"]
    assert (tmp_path / "rationales.png").stat().st_size > 0
    for name in ("backbone", "sop"):
        assert (tmp_path / "models" / name / "model.safetensors").is_file()
    summary = written["summary"]
    for key in (
        "backbone_accuracy",
        "sop_accuracy",
        "sop_token_f1",
        "random_iou_f1",
        "sop_minus_random_token_f1",
        "integrated_gradients_comprehensiveness",
    ):
        assert key in summary
    assert 0 <= summary["sop_accuracy"] <= 1
    tables = written["tables"]
    for table in tables:
        assert len(table["rows"]) == len(table["bold"])
        assert all(
            len(r) == len(table["columns"]) == len(b)
            for r, b in zip(table["rows"], table["bold"], strict=True)
        )
    assert written["figures"] == ["rationales.png"]
