"""Sum-of-Parts (SOP): a self-attributing wrapper around a frozen backbone.

You et al., "Sum-of-Parts: Self-Attributing Neural Networks with End-to-End Learning of
Feature Groups", ICML 2025 (arXiv 2310.16316). The wrapped model predicts

    f(x) = sum_i c_i(x) h(g_i ⊙ x),

where h is the frozen backbone, g_1..g_m are binary masks (feature *groups*) produced from x by
a group generator, and c_i(x) >= 0 are group scores that sum to one for every output. Each
term is the backbone's own prediction on the pixels of one group (zero elsewhere), so the
attribution c_i h(g_i ⊙ x) is faithful by construction: it *is* how the prediction is made.

Pipeline of :meth:`SumOfParts.explain`, for a batch of B inputs of shape (C, H, W):

1. Tokens. A trainable token encoder (by default a copy of the backbone's first conv blocks)
   maps x to a feature map, pooled either over the cells of a ``patch_tokens`` x
   ``patch_tokens`` grid or over the segments of a label map: T tokens per input.
2. Group generator (:class:`~cosmo_sop.models.groups.GroupGenerator`). Multi-head
   self-attention over the tokens. Every row (head k, query token j) is a candidate group: its
   top ``keep_fraction`` of tokens, binarised. The ``n_groups`` best distinct candidates are
   chosen at token level, and only those m are expanded to pixel masks.
3. Backbone. The m masked inputs of every sample (pixels outside the group set to 0, the
   mean of a convergence map) go through ``backbone.embed`` as one batch of B m rows, cut
   into chunks of at most ``max_backbone_batch``: m backbone passes per input, plus the token
   encoder, a fraction of one more.
4. Group selector (:class:`~cosmo_sop.models.groups.GroupSelector`). One query per output,
   initialised to that output's row of the backbone's output layer, attends over the m group
   embeddings with sparsemax: scores c (B, m, n_outputs), each output's column summing to 1,
   most exactly 0.
5. Sum. Partial predictions p = output_layer(embedding) (B, m, n_outputs) and
   y[b, o] = sum_i c[b, i, o] p[b, i, o]. For classification the same sum is taken over
   per-group logits, and the probabilities are the softmax of the summed logits.

How the groups are made, and where that differs from the authors' code, is told in
:mod:`cosmo_sop.models.groups`.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import torch
from torch import Tensor, nn

from cosmo_sop.config import defaults, fill_defaults
from cosmo_sop.errors import InputError
from cosmo_sop.models.groups import (
    Explanation,
    GroupGenerator,
    GroupSelector,
    Normalisation,
    SelectorInit,
    SelectorNormalisation,
    sample_groups,
)
from cosmo_sop.models.settings import check_sop_settings
from cosmo_sop.models.tokens import (
    CONTEXT,
    patch_token_map,
    patch_tokens,
    segment_tokens,
    tokens_to_pixels,
)

TokenKind = Literal["patches", "segments"]
Task = Literal["regression", "classification"]


class SumOfParts(nn.Module):
    """Self-attributing Sum-of-Parts model around a frozen backbone.

    Parameters
    ----------
    backbone
        Trained model with ``embed(x) -> (B, E)``; frozen here (``requires_grad`` False, always
        in eval mode). Its prediction must be ``output_layer(embed(x))``.
    token_encoder
        Trainable module mapping x (B, C, H, W) to a feature map (B, D, h, w).
    input_shape
        (C, H, W) of the inputs.
    output_layer
        The backbone's linear read-out, or the name of that submodule of ``backbone``.
    task
        "regression" or "classification" (``prediction`` is then logits).
    tokens
        "patches": a ``patch_tokens`` x ``patch_tokens`` grid; "segments": the segments of a
        label map given to :meth:`forward`.
    patch_tokens
        Side of the token grid in "patches" mode.
    n_heads, d_model, n_groups, keep_fraction, attention, max_overlap
        Group generator settings; see :class:`~cosmo_sop.models.groups.GroupGenerator`.
    selector_init, selector_normalisation
        Group selector settings; see :class:`~cosmo_sop.models.groups.GroupSelector`.
    train_groups
        In training mode, each input uses a random ``train_groups`` of its m groups (None, or m
        or more: all), which cuts the backbone passes of a step by m / ``train_groups``; in eval
        mode all m.
    max_backbone_batch
        Most masked inputs per backbone call, to bound memory.

    ``tokens`` and the settings after it default (None) to the config schema's ``sop`` section.

    Attributes
    ----------
    generator : ~cosmo_sop.models.groups.GroupGenerator
    selector : ~cosmo_sop.models.groups.GroupSelector
    config : dict
        JSON-serialisable settings; see :meth:`from_config`.
    """

    def __init__(
        self,
        backbone: nn.Module,
        token_encoder: nn.Module,
        input_shape: Sequence[int],
        output_layer: str | nn.Linear = "head",
        task: Task = "regression",
        tokens: TokenKind | None = None,
        patch_tokens: int | None = None,
        n_heads: int | None = None,
        d_model: int | None = None,
        n_groups: int | None = None,
        keep_fraction: float | None = None,
        attention: Normalisation | None = None,
        max_overlap: float | None = None,
        selector_init: SelectorInit | None = None,
        selector_normalisation: SelectorNormalisation | None = None,
        train_groups: int | None = None,
        max_backbone_batch: int | None = None,
    ) -> None:
        super().__init__()
        settings = fill_defaults(
            "sop",
            tokens=tokens,
            patch_tokens=patch_tokens,
            n_heads=n_heads,
            d_model=d_model,
            n_groups=n_groups,
            keep_fraction=keep_fraction,
            attention=attention,
            max_overlap=max_overlap,
            selector_init=selector_init,
            selector_normalisation=selector_normalisation,
            train_groups=train_groups,
            max_backbone_batch=max_backbone_batch,
        )
        check_sop_settings(input_shape, task, **settings)
        self.input_shape = tuple(int(n) for n in input_shape)
        self.task = task
        self.tokens = settings["tokens"]
        self.patch_tokens = settings["patch_tokens"]
        self.max_backbone_batch = settings["max_backbone_batch"]
        self.train_groups = settings["train_groups"]

        # Frozen backbone. Its read-out is found by name, so the state dict holds it only once;
        # a read-out outside the backbone is registered (and frozen) here.
        self.backbone = backbone.requires_grad_(False).eval()
        if isinstance(output_layer, str):
            self._output_layer_name: str | None = output_layer
            output_layer = backbone.get_submodule(output_layer)
        else:
            names = [name for name, module in backbone.named_modules() if module is output_layer]
            self._output_layer_name = names[0] if names else None
            if not names:
                self.output_layer = output_layer.requires_grad_(False).eval()
        if not isinstance(output_layer, nn.Linear):
            kind = type(output_layer).__name__
            raise ValueError(f"output_layer must be an nn.Linear, got {kind}")
        self.n_outputs = output_layer.out_features

        self.token_encoder = token_encoder
        token_dim = self._feature_shape()[0]
        generator = ("d_model", "n_heads", "n_groups", "keep_fraction", "attention", "max_overlap")
        self.generator = GroupGenerator(token_dim, **{k: settings[k] for k in generator})
        self.selector = GroupSelector(
            output_layer.weight, settings["selector_init"], settings["selector_normalisation"]
        )
        self._encoder_blocks: int | None = None
        self._settings = {"input_shape": list(self.input_shape), "task": task, **settings}

    # -- construction ---------------------------------------------------------------------------

    @classmethod
    def from_backbone(
        cls,
        backbone: nn.Module,
        input_shape: Sequence[int],
        encoder_blocks: int | None = None,
        **settings: Any,
    ) -> SumOfParts:
        """SOP whose token encoder is a trainable copy of the backbone's first blocks.

        The backbone makes the copy (``backbone.token_encoder(encoder_blocks)``): the CNN's first
        conv blocks (the SOP paper's CosmoGrid model used the features after the second, 14 x 14
        for a 66 x 66 patch), or a ViT's patch embedding and first blocks.

        Parameters
        ----------
        backbone
            Model with ``embed`` and ``token_encoder(n_blocks)``, e.g.
            :class:`~cosmo_sop.models.backbone.ConvRegressor` or
            :class:`~cosmo_sop.models.vit.VisionTransformer`.
        input_shape
            (C, H, W) of the inputs.
        encoder_blocks
            How many leading blocks to copy (None: the config schema's ``sop.encoder_blocks``).
        **settings
            Further constructor arguments (``output_layer`` must then be a name).
        """
        if encoder_blocks is None:
            encoder_blocks = defaults("sop")["encoder_blocks"]
        model = cls(backbone, backbone.token_encoder(encoder_blocks), input_shape, **settings)
        model._encoder_blocks = encoder_blocks
        return model

    @property
    def config(self) -> dict[str, Any]:
        """Settings that rebuild this model around its backbone with :meth:`from_config`."""
        return {
            **self._settings,
            "output_layer": self._output_layer_name,
            "encoder_blocks": self._encoder_blocks,
        }

    @classmethod
    def from_config(
        cls, backbone: nn.Module, config: Mapping[str, Any], where: str = "SOP config"
    ) -> SumOfParts:
        """Rebuild an (untrained) SOP around ``backbone`` from :attr:`config`.

        Only models made by :meth:`from_backbone` with a named output layer can be rebuilt this
        way; load the trained weights with ``load_state_dict`` afterwards.

        Raises
        ------
        InputError
            On unknown keys, a custom token encoder, or values the constructor rejects.
        """
        accepted = {"encoder_blocks"} | set(inspect.signature(cls.__init__).parameters)
        accepted -= {"self", "backbone", "token_encoder"}
        unknown = sorted(set(config) - accepted)
        if unknown:
            raise InputError(
                where, f"unknown SumOfParts option(s) {unknown}; accepted: {sorted(accepted)}"
            )
        settings = dict(config)
        if settings.get("encoder_blocks") is None or settings.get("output_layer", "head") is None:
            raise InputError(
                where,
                "this SOP was built with a custom token encoder or output layer; "
                "rebuild it with SumOfParts(...) directly",
            )
        if "input_shape" not in settings:
            raise InputError(where, "SOP config lacks 'input_shape'")
        try:
            return cls.from_backbone(backbone, settings.pop("input_shape"), **settings)
        except (TypeError, ValueError, AttributeError) as error:
            raise InputError(where, f"invalid SumOfParts config: {error}") from error

    def train(self, mode: bool = True) -> SumOfParts:
        """Set training mode for the generator, selector and encoder; the backbone stays in eval."""
        super().train(mode)
        self.backbone.eval()
        if hasattr(self, "output_layer"):
            self.output_layer.eval()
        return self

    # -- computation ----------------------------------------------------------------------------

    def forward(self, x: Tensor, segments: Tensor | None = None) -> Tensor:
        """Prediction, shape (B, n_outputs); the same as ``explain(x, segments).prediction``."""
        return self.explain(x, segments).prediction

    def explain(self, x: Tensor, segments: Tensor | None = None) -> Explanation:
        """Predict and return the groups, scores and partial predictions behind the prediction.

        Parameters
        ----------
        x
            Inputs, shape (B, C, H, W).
        segments
            Integer label maps (B, H, W) with labels 0..S_b - 1, and -1 for context pixels
            (shown with every group, never a token); required in "segments" mode, not allowed in
            "patches" mode.

        Returns
        -------
        Explanation
            Tensors keep their autograd graph; wrap the call in ``torch.no_grad()`` for analysis.
        """
        token_map = self._check_inputs(x, segments)
        features = self.token_encoder(x)
        if self.tokens == "patches":
            tokens = patch_tokens(features, self.patch_tokens)
            token_valid = torch.ones(tokens.shape[:2], dtype=torch.bool, device=x.device)
        else:
            tokens, token_valid = segment_tokens(features, token_map)
        groups = self.generator(tokens, token_valid)
        if (
            self.training
            and self.train_groups is not None
            and self.train_groups < len(groups[0][0])
        ):
            groups = sample_groups(groups, self.train_groups)

        pixel_masks = tokens_to_pixels(groups.masks, token_map)  # (B, m, H, W), exactly 0/1
        embeddings = self._embed_groups(x, pixel_masks, groups.valid, token_map)  # (B, m, E)
        partial = self._read_out(embeddings).masked_fill(~groups.valid[:, :, None], 0.0)
        scores = self.selector(embeddings, groups.valid)
        prediction = (scores * partial).sum(1)

        return Explanation(
            prediction=prediction,
            masks=pixel_masks.detach().bool(),
            tokens=groups.tokens,
            scores=scores,
            partial=partial,
            valid=groups.valid,
            token_map=token_map,
            probabilities=prediction.softmax(-1) if self.task == "classification" else None,
        )

    def token_map(self, x: Tensor, segments: Tensor | None = None) -> Tensor:
        """Token index of every pixel, int64 (B, H, W): the grid cell or the segment label."""
        return self._check_inputs(x, segments)

    def parts_of(
        self, x: Tensor, group_tokens: Tensor, segments: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """The backbone on ``x`` masked to any given groups: what SOP would sum for them.

        For null models and floors (random groups, other scores) on SOP's own tokens.

        Parameters
        ----------
        x
            Inputs, shape (B, C, H, W).
        group_tokens
            bool, shape (B, m, T); tokens of each group (all False: an invalid group).
        segments
            Label maps (B, H, W) in "segments" mode.

        Returns
        -------
        partial : Tensor
            Shape (B, m, n_outputs); the backbone's prediction on each masked input (0 for
            empty groups).
        embeddings : Tensor
            Shape (B, m, E); for scoring with :attr:`selector`.
        """
        token_map = self._check_inputs(x, segments)
        valid = group_tokens.any(-1)
        pixel_masks = tokens_to_pixels(group_tokens.to(x.dtype), token_map)
        embeddings = self._embed_groups(x, pixel_masks, valid, token_map)
        partial = self._read_out(embeddings).masked_fill(~valid[:, :, None], 0.0)
        return partial, embeddings

    def _embed_groups(
        self, x: Tensor, pixel_masks: Tensor, valid: Tensor, token_map: Tensor
    ) -> Tensor:
        """Backbone embeddings of the valid masked inputs, one batched pass in memory chunks.

        Context pixels (``token_map == CONTEXT``) are kept in every masked input.

        Returns
        -------
        Tensor
            Shape (B, m, E); zeros for invalid groups, which cost no backbone pass.
        """
        sample, group = valid.nonzero(as_tuple=True)
        masks = pixel_masks[sample, group]  # (N, H, W)
        context = token_map[sample] == CONTEXT
        if context.any():
            masks = masks.masked_fill(context, 1.0)
        masked = x[sample] * masks.unsqueeze(1)  # (N, C, H, W)
        chunks = masked.split(self.max_backbone_batch)
        embedded = torch.cat([self.backbone.embed(chunk) for chunk in chunks])
        out = embedded.new_zeros(*valid.shape, embedded.shape[-1])
        return out.index_put((sample, group), embedded)

    def _read_out(self, embeddings: Tensor) -> Tensor:
        """The backbone's output layer applied to (..., E) embeddings."""
        if self._output_layer_name is None:
            return self.output_layer(embeddings)
        return self.backbone.get_submodule(self._output_layer_name)(embeddings)

    # -- validation -----------------------------------------------------------------------------

    def _feature_shape(self) -> tuple[int, ...]:
        """(D, h, w) of the token encoder's output, from one blank input."""
        was_training = self.token_encoder.training
        self.token_encoder.eval()  # no BatchNorm statistics updates from the probe
        parameter = next(self.token_encoder.parameters(), None)
        dtype = torch.get_default_dtype() if parameter is None else parameter.dtype
        probe = torch.zeros(1, *self.input_shape, dtype=dtype)
        with torch.no_grad():
            features = self.token_encoder(probe)
        self.token_encoder.train(was_training)
        if features.ndim != 4:
            raise ValueError(
                "token_encoder must return (B, D, h, w) feature maps, "
                f"got shape {tuple(features.shape)}"
            )
        return tuple(features.shape[1:])

    def _check_inputs(self, x: Tensor, segments: Tensor | None) -> Tensor:
        """Validate inputs; return the pixel -> token map (B, H, W), int64."""
        if x.ndim != 4 or tuple(x.shape[1:]) != self.input_shape:
            raise ValueError(
                f"SumOfParts expects inputs (B, *{self.input_shape}), got {tuple(x.shape)}"
            )
        n_batch, _, height, width = x.shape
        if self.tokens == "patches":
            if segments is not None:
                raise ValueError("segments were given to a SumOfParts with patch tokens")
            token_map = patch_token_map(height, width, self.patch_tokens, device=x.device)
            return token_map.expand(n_batch, height, width)
        if segments is None:
            raise ValueError("a SumOfParts with segment tokens needs the segments label maps")
        if tuple(segments.shape) != (n_batch, height, width):
            raise ValueError(
                f"segments must have shape {(n_batch, height, width)}, got {tuple(segments.shape)}"
            )
        dtype = segments.dtype
        if dtype.is_floating_point or dtype.is_complex or dtype == torch.bool:
            raise ValueError(f"segments must hold integer labels, got dtype {segments.dtype}")
        if int(segments.min()) < CONTEXT:
            raise ValueError(f"segments labels must be >= 0, or {CONTEXT} for context pixels")
        return segments.to(device=x.device, dtype=torch.int64)
