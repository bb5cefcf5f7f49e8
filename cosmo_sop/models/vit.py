"""Vision Transformer backbone: the second architecture SOP wraps, for maps and for images.

A plain ViT (Dosovitskiy et al. 2021) from Hugging Face ``transformers``: the input (C, H, W) is
cut into ``patch_size`` x ``patch_size`` patches, each projected linearly to ``hidden_size``, a
[CLS] token and learnt position embeddings are added, ``layers`` pre-norm transformer blocks
follow, and the layer-normed [CLS] token is the embedding a linear ``head`` reads out. No
pretrained ViT can be installed offline, so it is trained from scratch by
:func:`cosmo_sop.training.loop.fit`, like the CNN.

It offers what :class:`~cosmo_sop.models.sop.SumOfParts` needs of a backbone: ``embed``, a
linear ``head``, and :meth:`VisionTransformer.token_encoder`. With SOP's ``patch_tokens`` equal
to ``image_size / patch_size`` the SOP tokens are exactly the ViT's patches, as in the authors'
ImageNet model. A masked pixel is 0 (the mean of a convergence map; a black pixel of an image
scaled to [0, 1]), so a group's input is the image with the other patches blanked.

Unlike the CNN there is no X-DNN twin: attention is not positively homogeneous.
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Mapping
from typing import Any

from torch import Tensor, nn

from cosmo_sop.config import fill_defaults
from cosmo_sop.errors import InputError
from cosmo_sop.models.backbone import InputScale

#: The ``architecture`` value in a ViT's :attr:`VisionTransformer.config`.
ARCHITECTURE = "vit"


class VisionTransformer(nn.Module):
    """ViT regressor or classifier of (B, C, H, W) inputs.

    Parameters
    ----------
    in_channels
        Input channels C (tomographic bins, or 3 for RGB images).
    n_outputs
        Regressed parameters, or classes (the head then gives logits).
    image_size
        Side H = W of the square inputs, in pixels; a multiple of ``patch_size``.
    patch_size
        Side of the ViT's patches, in pixels.
    hidden_size, layers, heads, mlp_size
        Width of the token embeddings, number of transformer blocks, attention heads per block
        (``hidden_size`` must be a multiple of it), and width of each block's MLP.
    dropout
        Dropout probability of the blocks and the attention weights (identity in eval mode).

    Arguments left None take the config schema's ``vit`` section.

    Attributes
    ----------
    scale : ~cosmo_sop.models.backbone.InputScale
        Fixed per-channel input scale, set from the training data.
    vit : transformers.ViTModel
        Patch embedding, encoder and final layer norm (no pooler).
    head : nn.Linear
        ``hidden_size -> n_outputs``.
    grid : int
        Patches per side, ``image_size // patch_size``.
    """

    def __init__(
        self,
        in_channels: int,
        n_outputs: int,
        image_size: int,
        patch_size: int | None = None,
        hidden_size: int | None = None,
        layers: int | None = None,
        heads: int | None = None,
        mlp_size: int | None = None,
        dropout: float | None = None,
    ) -> None:
        super().__init__()
        from transformers import ViTConfig, ViTModel

        arch = fill_defaults(
            "vit",
            patch_size=patch_size,
            hidden_size=hidden_size,
            layers=layers,
            heads=heads,
            mlp_size=mlp_size,
            dropout=dropout,
        )
        if image_size % arch["patch_size"]:
            raise ValueError(
                f"image_size {image_size} is not a multiple of patch_size {arch['patch_size']}"
            )
        if arch["hidden_size"] % arch["heads"]:
            raise ValueError(
                f"hidden_size {arch['hidden_size']} is not a multiple of heads {arch['heads']}"
            )
        self.in_channels, self.n_outputs, self.image_size = in_channels, n_outputs, image_size
        self._arch = arch
        self.grid = image_size // arch["patch_size"]
        vit_config = ViTConfig(
            image_size=image_size,
            patch_size=arch["patch_size"],
            num_channels=in_channels,
            hidden_size=arch["hidden_size"],
            num_hidden_layers=arch["layers"],
            num_attention_heads=arch["heads"],
            intermediate_size=arch["mlp_size"],
            hidden_dropout_prob=arch["dropout"],
            attention_probs_dropout_prob=arch["dropout"],
        )
        # Eager attention: the same arithmetic on every device and for every batch size.
        vit_config._attn_implementation = "eager"
        self.scale = InputScale(in_channels)
        self.vit = ViTModel(vit_config, add_pooling_layer=False)
        self.head = nn.Linear(arch["hidden_size"], n_outputs)

    # -- construction -------------------------------------------------------------------------

    @property
    def config(self) -> dict[str, Any]:
        """Constructor arguments (JSON-serialisable) and ``architecture: "vit"``."""
        return {
            "architecture": ARCHITECTURE,
            "in_channels": self.in_channels,
            "n_outputs": self.n_outputs,
            "image_size": self.image_size,
            **self._arch,
        }

    @classmethod
    def from_config(
        cls, config: Mapping[str, Any], where: str = "model config"
    ) -> VisionTransformer:
        """Rebuild an (untrained) network from :attr:`config`.

        Raises
        ------
        InputError
            On unknown or missing keys, or values the constructor rejects.
        """
        settings = {k: v for k, v in config.items() if k != "architecture"}
        accepted = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
        unknown = sorted(set(settings) - set(accepted))
        if unknown:
            raise InputError(where, f"unknown ViT option(s) {unknown}; accepted: {accepted}")
        try:
            return cls(**settings)
        except (TypeError, ValueError) as error:
            raise InputError(where, f"invalid ViT config: {error}") from error

    def token_encoder(self, n_blocks: int) -> nn.Module:
        """A trainable copy of the input scale, patch embedding and first ``n_blocks - 1`` blocks.

        Returns
        -------
        nn.Module
            Maps x (B, C, H, W) to patch features (B, hidden_size, grid, grid): SOP's tokens.
        """
        if not 1 <= n_blocks <= len(self.vit.layers) + 1:
            raise ValueError(
                f"encoder_blocks must lie in [1, {len(self.vit.layers) + 1}] for this ViT, "
                f"got {n_blocks!r}"
            )
        encoder = _PatchFeatures(self.scale, self.vit.embeddings, self.vit.layers[: n_blocks - 1])
        return copy.deepcopy(encoder).requires_grad_(True)

    # -- computation --------------------------------------------------------------------------

    def embed(self, x: Tensor) -> Tensor:
        """The layer-normed [CLS] token, shape (B, hidden_size)."""
        return self.vit(pixel_values=self.scale(x)).last_hidden_state[:, 0]

    def forward(self, x: Tensor) -> Tensor:
        """Predictions (or logits), shape (B, ``n_outputs``)."""
        return self.head(self.embed(x))


class _PatchFeatures(nn.Module):
    """Patch tokens of a ViT after its embedding and some blocks, as a (B, D, g, g) map."""

    def __init__(self, scale: nn.Module, embeddings: nn.Module, blocks: nn.ModuleList) -> None:
        super().__init__()
        self.scale, self.embeddings, self.blocks = scale, embeddings, blocks

    def forward(self, x: Tensor) -> Tensor:
        hidden = self.embeddings(self.scale(x))
        for block in self.blocks:
            hidden = block(hidden)
        patches = hidden[:, 1:]  # drop [CLS]
        side = int(round(patches.shape[1] ** 0.5))
        return patches.transpose(1, 2).reshape(x.shape[0], -1, side, side)
