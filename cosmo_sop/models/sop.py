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
2. Group generator (:class:`GroupGenerator`). Multi-head self-attention over the tokens.
   Every row (head k, query token j) is a candidate group: its top ``keep_fraction`` of tokens,
   binarised. The ``n_groups`` best distinct candidates are chosen at token level, and only
   those m are expanded to pixel masks.
3. Backbone. The m masked inputs of every sample (pixels outside the group set to 0, the
   mean of a convergence map) go through ``backbone.embed`` as one batch of B m rows, cut
   into chunks of at most ``max_backbone_batch``: m backbone passes per input, plus the token
   encoder, a fraction of one more.
4. Group selector (:class:`GroupSelector`). One query per output, initialised to that
   output's row of the backbone's output layer, attends over the m group embeddings with
   sparsemax: scores c (B, m, n_outputs), each output's column summing to 1, most exactly 0.
5. Sum. Partial predictions p = output_layer(embedding) (B, m, n_outputs) and
   y[b, o] = sum_i c[b, i, o] p[b, i, o]. For classification the same sum is taken over
   per-group logits, and the probabilities are the softmax of the summed logits.

Choices that differ from the authors' code (github.com/BrachioLab/exlib):

- Groups are chosen at token level, by a score (the row's attention mass on its kept tokens)
  with duplicates removed, and only the m chosen ones become pixel masks. The reference code
  expanded every one of the heads x tokens candidates to full resolution before keeping m at
  fixed candidate indices.
- Gradients reach the generator through a straight-through estimator instead of the paper's
  scale factor, so that every partial prediction is exactly the backbone's (see
  :meth:`GroupGenerator.forward`).
- Masks are exactly 0/1 and groups with no distinct candidate left are marked invalid and
  skipped, rather than repeated.
"""

from __future__ import annotations

import copy
import inspect
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

import torch
import torch.nn.functional as F
from entmax import sparsemax
from torch import Tensor, nn

from cosmo_sop.errors import InputError
from cosmo_sop.models.groups import (
    drop_duplicates,
    keep_top_tokens,
    n_kept_tokens,
    patch_token_map,
    patch_tokens,
    segment_tokens,
    straight_through,
    tokens_to_pixels,
)

TokenKind = Literal["patches", "segments"]
Normalisation = Literal["sparsemax", "softmax"]
Task = Literal["regression", "classification"]


@dataclass
class Explanation:
    """Prediction of a :class:`SumOfParts` model together with its parts.

    Groups that could not be filled (fewer distinct candidates than ``n_groups``, e.g. a map
    with very few segments) have ``valid`` False, an empty mask and zero score and partial
    prediction, so every sum below still holds.

    Attributes
    ----------
    prediction : Tensor
        Shape (B, n_outputs): regression values, or logits for classification.
        Equals ``(scores * partial).sum(1)``.
    masks : Tensor
        bool, shape (B, m, H, W); pixels of each group. The backbone saw exactly
        ``x * masks[:, i, None]``.
    tokens : Tensor
        bool, shape (B, m, T); tokens (grid cells or segment labels) in each group.
    scores : Tensor
        Shape (B, m, n_outputs); group scores c >= 0, each output's column sums to 1.
    partial : Tensor
        Shape (B, m, n_outputs); the backbone's prediction on each masked input.
    valid : Tensor
        bool, shape (B, m); False for unfilled groups.
    token_map : Tensor
        int64, shape (B, H, W); token index of every pixel.
    probabilities : Tensor or None
        Shape (B, n_outputs); softmax of ``prediction`` for classification, else None.
    """

    prediction: Tensor
    masks: Tensor
    tokens: Tensor
    scores: Tensor
    partial: Tensor
    valid: Tensor
    token_map: Tensor
    probabilities: Tensor | None = None


class Groups(NamedTuple):
    """The m groups chosen per input by :class:`GroupGenerator`.

    Attributes
    ----------
    tokens : Tensor
        bool, shape (B, m, T); token membership, all False for invalid groups.
    masks : Tensor
        float, shape (B, m, T); exactly ``tokens`` as 0/1 in value, carrying the gradient of the
        attention weights (straight-through estimator).
    valid : Tensor
        bool, shape (B, m).
    """

    tokens: Tensor
    masks: Tensor
    valid: Tensor


class GroupGenerator(nn.Module):
    """Multi-head self-attention over tokens whose binarised rows are candidate groups.

    Parameters
    ----------
    token_dim
        Feature size D of the tokens.
    d_model
        Size of the query and key projections, split evenly over the heads.
    n_heads
        Number of attention heads; heads x T candidate groups per input.
    n_groups
        Number m of groups kept per input.
    keep_fraction
        Fraction tau of an input's valid tokens that each group keeps, ceil(tau T) >= 1.
    attention
        Normalisation of the attention rows, "sparsemax" or "softmax".
    """

    def __init__(
        self,
        token_dim: int,
        d_model: int,
        n_heads: int,
        n_groups: int,
        keep_fraction: float,
        attention: Normalisation,
    ) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.d_head = d_model // n_heads
        self.n_groups = n_groups
        self.keep_fraction = keep_fraction
        self.attention = attention
        # Conv features have arbitrary scale; normalising the tokens keeps the attention logits
        # O(1) whatever the encoder (the original code multiplied them by a tuned constant).
        self.norm = nn.LayerNorm(token_dim)
        self.query = nn.Linear(token_dim, d_model)
        # No key bias: it adds the same amount to every logit of a row, which both softmax and
        # sparsemax ignore, so it would never learn.
        self.key = nn.Linear(token_dim, d_model, bias=False)

    def forward(self, tokens: Tensor, valid: Tensor) -> Groups:
        """Choose m groups of tokens per input.

        Parameters
        ----------
        tokens
            Shape (B, T, D).
        valid
            bool, shape (B, T); False for padding tokens, which no group may contain.

        Returns
        -------
        Groups
            Token sets (B, m, T) with their straight-through masks and validity.
        """
        n_batch, n_tokens, _ = tokens.shape
        tokens = self.norm(tokens)
        shape = (n_batch, n_tokens, self.n_heads, self.d_head)
        query = self.query(tokens).view(shape).transpose(1, 2)  # (B, h, T, d)
        key = self.key(tokens).view(shape).transpose(1, 2)
        logits = query @ key.transpose(-1, -2) / math.sqrt(self.d_head)  # (B, h, T, T)
        logits = logits.masked_fill(~valid[:, None, None, :], -math.inf)

        # Candidates: one per (head, query token), flattened to N = h T rows, each keeping its
        # n_keep best tokens.
        logits = logits.flatten(1, 2)  # (B, N, T)
        n_keep = n_kept_tokens(valid.sum(1), self.keep_fraction)  # (B,)
        kept = keep_top_tokens(logits, n_keep)  # (B, N, T) bool

        # Score of a candidate: the softmax mass of its row on the kept tokens, i.e. how
        # concentrated the row is on its group. Softmax even under sparsemax attention, whose
        # many rows with mass exactly 1 on their kept set would otherwise all tie.
        score = (torch.softmax(logits.detach(), dim=-1) * kept).sum(-1)
        query_valid = valid[:, None, :].expand(n_batch, self.n_heads, n_tokens).flatten(1)
        score = score.masked_fill(~query_valid, -math.inf)
        score = drop_duplicates(kept, score)

        # The m best candidates; fewer distinct candidates than m leave invalid groups.
        n_candidates = score.shape[1]
        if n_candidates < self.n_groups:
            missing = self.n_groups - n_candidates
            score = F.pad(score, (0, missing), value=-math.inf)
            kept = F.pad(kept, (0, 0, 0, missing))
            logits = F.pad(logits, (0, 0, 0, missing))
        chosen = score.argsort(dim=1, descending=True, stable=True)[:, : self.n_groups]
        group_valid = score.gather(1, chosen).isfinite()
        index = chosen[:, :, None].expand(-1, -1, n_tokens)
        group_tokens = kept.gather(1, index) & group_valid[:, :, None]

        # Attention weights are needed only for the m chosen rows (the selection above uses the
        # logits), which saves normalising the other h T - m rows.
        chosen_logits = logits.gather(1, index)
        if self.attention == "sparsemax":
            attention = sparsemax(chosen_logits, dim=-1)
        else:
            attention = torch.softmax(chosen_logits, dim=-1)
        # Gradient path: a straight-through estimator rather than the paper's scale factor
        # (kept minus discarded attention multiplying the group's output). The estimator keeps
        # y = sum_i c_i h(g_i ⊙ x) exact, with partial predictions that are the backbone's own,
        # while the scale factor would rescale every partial regression value away from what
        # h predicts. Its gradient per token is the first-order effect on the loss of adding
        # that token's pixels to the group, passed on to the token's attention weight.
        group_masks = straight_through(group_tokens.to(attention.dtype), attention)
        return Groups(group_tokens, group_masks, group_valid)


class GroupSelector(nn.Module):
    """Sparse cross-attention from one query per output over the group embeddings.

    With a fixed query per output, attention's query and key projections compose into a single
    vector per output, so that vector is the parameter, initialised to the output's row of the
    backbone's output layer: the initial score logit of a group is then the backbone's own
    output (less the bias) on that group, as in the paper.

    Parameters
    ----------
    output_weight
        Shape (n_outputs, E), e.g. ``backbone.head.weight``; copied, not shared.
    """

    def __init__(self, output_weight: Tensor) -> None:
        super().__init__()
        self.queries = nn.Parameter(output_weight.detach().clone())

    def forward(self, embeddings: Tensor, valid: Tensor) -> Tensor:
        """Scores of the groups for every output.

        Parameters
        ----------
        embeddings
            Shape (B, m, E); backbone embeddings of the masked inputs.
        valid
            bool, shape (B, m); invalid groups get score exactly 0.

        Returns
        -------
        Tensor
            Shape (B, m, n_outputs), >= 0, summing to 1 over m for every (b, output).
        """
        logits = torch.einsum("bme,oe->bmo", embeddings, self.queries)
        logits = logits.masked_fill(~valid[:, :, None], -math.inf)
        return sparsemax(logits, dim=1)


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
    n_heads, d_model, n_groups, keep_fraction, attention
        Group generator settings; see :class:`GroupGenerator`.
    max_backbone_batch
        Most masked inputs per backbone call, to bound memory.

    Attributes
    ----------
    generator : GroupGenerator
    selector : GroupSelector
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
        tokens: TokenKind = "patches",
        patch_tokens: int = 14,
        n_heads: int = 4,
        d_model: int = 64,
        n_groups: int = 20,
        keep_fraction: float = 0.2,
        attention: Normalisation = "sparsemax",
        max_backbone_batch: int = 256,
    ) -> None:
        super().__init__()
        _check_settings(
            input_shape, task, tokens, patch_tokens, n_heads, d_model, n_groups, keep_fraction,
            attention, max_backbone_batch,
        )
        self.input_shape = tuple(int(n) for n in input_shape)
        self.task = task
        self.tokens = tokens
        self.patch_tokens = patch_tokens
        self.max_backbone_batch = max_backbone_batch

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
        self.generator = GroupGenerator(
            token_dim, d_model, n_heads, n_groups, keep_fraction, attention
        )
        self.selector = GroupSelector(output_layer.weight)
        self._encoder_blocks: int | None = None
        self._settings = dict(
            input_shape=list(self.input_shape), task=task, tokens=tokens,
            patch_tokens=patch_tokens, n_heads=n_heads, d_model=d_model, n_groups=n_groups,
            keep_fraction=keep_fraction, attention=attention, max_backbone_batch=max_backbone_batch,
        )  # fmt: skip

    # -- construction ---------------------------------------------------------------------------

    @classmethod
    def from_backbone(
        cls,
        backbone: nn.Module,
        input_shape: Sequence[int],
        encoder_blocks: int = 2,
        **settings: Any,
    ) -> SumOfParts:
        """SOP whose token encoder is a trainable copy of the backbone's first conv blocks.

        The SOP paper's CosmoGrid model used the features after the second block (14 x 14 for a
        66 x 66 patch through the default :class:`~cosmo_sop.models.backbone.ConvRegressor`).

        Parameters
        ----------
        backbone
            Model with a ``blocks`` ModuleList of conv blocks and ``embed``.
        input_shape
            (C, H, W) of the inputs.
        encoder_blocks
            How many leading blocks to copy.
        **settings
            Further constructor arguments (``output_layer`` must then be a name).
        """
        blocks = list(backbone.blocks)
        if not 1 <= encoder_blocks <= len(blocks):
            raise ValueError(
                f"encoder_blocks must lie in [1, {len(blocks)}], got {encoder_blocks!r}"
            )
        # The backbone's fixed input scaling (if any) goes first, so tokens see what it sees.
        layers = ([backbone.scale] if isinstance(getattr(backbone, "scale", None), nn.Module) else [])
        encoder = copy.deepcopy(nn.Sequential(*layers, *blocks[:encoder_blocks]))
        encoder.requires_grad_(True)
        model = cls(backbone, encoder, input_shape, **settings)
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
            Integer label maps (B, H, W) with labels 0..S_b - 1; required in "segments" mode,
            not allowed in "patches" mode.

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

        pixel_masks = tokens_to_pixels(groups.masks, token_map)  # (B, m, H, W), exactly 0/1
        embeddings = self._embed_groups(x, pixel_masks, groups.valid)  # (B, m, E)
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

    def _embed_groups(self, x: Tensor, pixel_masks: Tensor, valid: Tensor) -> Tensor:
        """Backbone embeddings of the valid masked inputs, one batched pass in memory chunks.

        Returns
        -------
        Tensor
            Shape (B, m, E); zeros for invalid groups, which cost no backbone pass.
        """
        sample, group = valid.nonzero(as_tuple=True)
        masked = x[sample] * pixel_masks[sample, group].unsqueeze(1)  # (N, C, H, W)
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
        if int(segments.min()) < 0:
            raise ValueError("segments labels must be >= 0")
        return segments.to(device=x.device, dtype=torch.int64)


def _check_settings(
    input_shape: Sequence[int],
    task: str,
    tokens: str,
    patch_tokens: int,
    n_heads: int,
    d_model: int,
    n_groups: int,
    keep_fraction: float,
    attention: str,
    max_backbone_batch: int,
) -> None:
    """Raise ValueError naming the first invalid constructor argument."""
    choices = {"task": ("regression", "classification"), "tokens": ("patches", "segments"),
               "attention": ("sparsemax", "softmax")}  # fmt: skip
    for name, value in {"task": task, "tokens": tokens, "attention": attention}.items():
        if value not in choices[name]:
            raise ValueError(f"{name} must be one of {choices[name]}, got {value!r}")
    counts = {"patch_tokens": patch_tokens, "n_heads": n_heads, "d_model": d_model,
              "n_groups": n_groups, "max_backbone_batch": max_backbone_batch}  # fmt: skip
    for name, value in counts.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if d_model % n_heads:
        raise ValueError(f"d_model={d_model} must be divisible by n_heads={n_heads}")
    if not 0.0 < keep_fraction <= 1.0:
        raise ValueError(f"keep_fraction must lie in (0, 1], got {keep_fraction!r}")
    if len(input_shape) != 3 or any(int(n) < 1 for n in input_shape):
        raise ValueError(f"input_shape must be (C, H, W) of positive sizes, got {input_shape!r}")
    if tokens == "patches" and patch_tokens > min(input_shape[1:]):
        raise ValueError(f"patch_tokens={patch_tokens} exceeds the input size {input_shape!r}")
