"""The BERT-family text task (``bert_text``): Sum-of-Parts around a fine-tuned MiniLM classifier
on MultiRC-style reading comprehension, synthetic (:mod:`.synthetic`) or ERASER MultiRC
(:mod:`.eraser`), with ERASER's rationale metrics (:mod:`.metrics`); :func:`.run.run` is the
entry point."""

from cosmo_sop.tasks.text.encoder import MiniLMClassifier
from cosmo_sop.tasks.text.eraser import load_eraser
from cosmo_sop.tasks.text.synthetic import make_synthetic

__all__ = ["MiniLMClassifier", "load_eraser", "make_synthetic"]
