"""The backbones SOP can wrap, by name: the CNN (``cnn``), the Vision Transformer (``vit``), and
the text task's pretrained MiniLM encoder (``minilm``, read back only).

A backbone's config (its sidecar's ``model_config.backbone``) names its architecture; configs
without the key are CNNs (run folders written before the ViT existed).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from torch import nn

from cosmo_sop.errors import InputError
from cosmo_sop.models.backbone import ConvRegressor
from cosmo_sop.models.vit import ARCHITECTURE as VIT
from cosmo_sop.models.vit import VisionTransformer

Architecture = Literal["cnn", "vit"]
ARCHITECTURES: tuple[Architecture, ...] = ("cnn", VIT)


def build_backbone(
    architecture: Architecture,
    in_channels: int,
    n_outputs: int,
    input_size: int,
    settings: Mapping[str, Any],
) -> nn.Module:
    """An untrained backbone of ``architecture`` for (in_channels, input_size, input_size) inputs.

    Parameters
    ----------
    settings
        The architecture's config section: ``backbone`` for the CNN, ``vit`` for the ViT.
    """
    if architecture == "cnn":
        return ConvRegressor(in_channels, n_outputs, input_size=input_size, **settings)
    if architecture == VIT:
        return VisionTransformer(in_channels, n_outputs, image_size=input_size, **settings)
    raise ValueError(f"architecture must be one of {ARCHITECTURES}, got {architecture!r}")


def backbone_from_config(config: Mapping[str, Any], where: str = "model config") -> nn.Module:
    """Rebuild an (untrained) backbone from its ``config`` attribute, of either architecture."""
    architecture = config.get("architecture", "cnn")
    if architecture == VIT:
        return VisionTransformer.from_config(config, where)
    if architecture == "minilm":
        # The text task's pretrained encoder, so that load_sop reads its SOP too; imported here
        # only, as models do not depend on the tasks built on them.
        from cosmo_sop.tasks.text.encoder import MiniLMClassifier

        return MiniLMClassifier.from_config(config, where)
    if architecture != "cnn":
        known = (*ARCHITECTURES, "minilm")
        raise InputError(where, f"unknown architecture {architecture!r}; known: {known}")
    return ConvRegressor.from_config(config, where)
