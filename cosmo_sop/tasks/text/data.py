"""Encoded examples as a map-style dataset for :func:`cosmo_sop.training.loop.fit`."""

from __future__ import annotations

from typing import Any

import torch

from cosmo_sop.tasks.text.encoder import Encoded


class TextDataset(torch.utils.data.Dataset):
    """Items ``{"ids": (L,), "segments": (1, L), "target": ()}``, all int64.

    The inputs stay token ids; ``MiniLMClassifier.inputs`` embeds them in the predict function,
    so a dataset of thousands of examples costs kilobytes, not the 384 floats per position of
    the embedded inputs.

    Parameters
    ----------
    encoded
        Output of :func:`~cosmo_sop.tasks.text.encoder.encode`.
    provenance
        JSON-serialisable description of the data (source, split, size, seed), recorded by the
        trainer in the run's fingerprint and sidecar.
    """

    def __init__(self, encoded: Encoded, provenance: Any = None) -> None:
        self.ids = torch.from_numpy(encoded.ids)
        self.segments = torch.from_numpy(encoded.segments)
        self.target = torch.from_numpy(encoded.labels)
        self.provenance = provenance
        self.sample_indices = list(range(len(self.target)))

    def __len__(self) -> int:
        return len(self.target)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {
            "ids": self.ids[index],
            "segments": self.segments[index],
            "target": self.target[index],
        }
