"""A tiny end-to-end run of the bert_text task: fine-tuning, SOP, ERASER metrics, outputs."""

from __future__ import annotations

import json

import pytest

from cosmo_sop.tasks.text.run import run

TINY = {
    "seed": 5,
    "training": {"progress": False, "device": "cpu", "threads": 1},
    "bert_text": {
        "n_train": 24,
        "n_val": 8,
        "n_test": 12,
        "n_sop_train": 16,
        "max_length": 40,
        "synthetic": {"min_sentences": 3, "max_sentences": 4},
        "training": {"epochs": 1, "batch_size": 8},
        "sop": {"n_groups": 4, "train_groups": 2, "training": {"epochs": 1, "batch_size": 8}},
        "attribution": {"method": "integrated_gradients", "n_steps": 2},
        "n_boot": 50,
        "figure_examples": 2,
    },
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
