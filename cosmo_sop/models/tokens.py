"""Tokens, candidate groups and pixel masks for the Sum-of-Parts group generator.

A *token* is a region of the input: either a cell of a square grid laid over the image
(:func:`patch_token_map`, :func:`patch_tokens`) or one segment of an integer label map
(:func:`segment_tokens`). Every pixel belongs to exactly one token, so a *group* is simply a
set of tokens, held as a boolean vector over tokens, and its pixel mask is that vector read
through the pixel -> token map (:func:`tokens_to_pixels`). Everything here works at token
level; only the groups that are finally used are ever expanded to pixels.

The functions are pure tensor maps (no parameters), used by the group generator
(:mod:`cosmo_sop.models.groups`) and by :class:`~cosmo_sop.models.sop.SumOfParts`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

#: Label of context pixels in a segment map: shown to the backbone with every group (the
#: question and answer of a reading-comprehension input, say), never a token of a group.
CONTEXT = -1

# -- tokens -----------------------------------------------------------------------------------


def patch_token_map(
    height: int, width: int, grid: int, device: torch.device | None = None
) -> Tensor:
    """Token index of every pixel for a ``grid`` x ``grid`` partition of an image.

    Pixel (y, x) belongs to grid cell (floor(y grid / H), floor(x grid / W)), the rule of
    nearest-neighbour upsampling, so cells are ``H / grid`` pixels high up to one pixel
    (66 pixels on a 14-cell grid give cells of 4 or 5 pixels).

    Returns
    -------
    Tensor
        int64, shape (height, width), values ``row * grid + column`` in [0, grid**2).
    """
    rows = torch.arange(height, device=device) * grid // height
    cols = torch.arange(width, device=device) * grid // width
    return rows[:, None] * grid + cols[None, :]


def patch_tokens(features: Tensor, grid: int) -> Tensor:
    """Average a feature map over the cells of a ``grid`` x ``grid`` partition.

    Parameters
    ----------
    features
        Shape (B, D, h, w); any h, w (adaptive pooling; a 14 x 14 map on a 14-cell grid is
        returned unchanged).

    Returns
    -------
    Tensor
        Shape (B, grid**2, D), tokens in the row-major order of :func:`patch_token_map`.
    """
    pooled = F.adaptive_avg_pool2d(features, grid)
    return pooled.flatten(2).transpose(1, 2)


def segment_tokens(features: Tensor, segments: Tensor) -> tuple[Tensor, Tensor]:
    """Average a feature map over every segment of a label map.

    The feature map is upsampled bilinearly to the resolution of ``segments`` first, so that a
    segment smaller than a feature cell still gets its own (interpolated) features.

    Parameters
    ----------
    features
        Shape (B, D, h, w).
    segments
        int64, shape (B, H, W), labels >= 0, or -1 for context pixels (in every group, never a
        token: :data:`CONTEXT`). Maps may have different numbers of segments: tokens are padded
        to S = segments.max() + 1 for the whole batch.

    Returns
    -------
    tokens : Tensor
        Shape (B, S, D); the mean feature of each segment, 0 for labels absent from a map.
    valid : Tensor
        bool, shape (B, S); True where the label occurs in the map (a real token, not padding).
    """
    n_batch, n_features = features.shape[:2]
    n_tokens = int(segments.max()) + 1
    upsampled = F.interpolate(
        features, size=segments.shape[-2:], mode="bilinear", align_corners=False
    )
    pixels = upsampled.flatten(2).transpose(1, 2)  # (B, HW, D)
    # Context pixels go to one extra slot, dropped at the end.
    labels = segments.flatten(1).masked_fill(segments.flatten(1) == CONTEXT, n_tokens)  # (B, HW)
    tokens = pixels.new_zeros(n_batch, n_tokens + 1, n_features).scatter_reduce(
        1, labels[:, :, None].expand_as(pixels), pixels, reduce="mean", include_self=False
    )
    counts = torch.zeros(n_batch, n_tokens + 1, dtype=torch.int64, device=segments.device)
    counts.scatter_add_(1, labels, torch.ones_like(labels))
    return tokens[:, :n_tokens], counts[:, :n_tokens] > 0


# -- candidate groups -------------------------------------------------------------------------


def n_kept_tokens(n_valid: Tensor, fraction: float) -> Tensor:
    """Number of tokens a group keeps: ceil(fraction * n_valid), at least 1.

    A relative tolerance of 1e-6 absorbs binary rounding (0.2 * 15 = 3.0000000000000004 in
    floating point must give 3, not 4).
    """
    wanted = torch.ceil(n_valid.double() * fraction * (1 - 1e-6))
    return wanted.clamp(min=1).to(torch.int64)


def keep_top_tokens(logits: Tensor, n_keep: Tensor) -> Tensor:
    """Binarise attention rows: keep the ``n_keep`` highest-scoring tokens of every row.

    Ranking uses the attention *logits*, not the normalised weights. Softmax and sparsemax are
    monotone in the logits, so both rankings agree wherever the weights differ; but sparsemax
    sets most weights to exactly 0, and ranking those ties would be arbitrary. Padded tokens
    must carry logit -inf so that they are never kept.

    Parameters
    ----------
    logits
        Shape (B, ..., T).
    n_keep
        int64, shape (B,); tokens to keep in every row of sample b (<= its valid tokens).

    Returns
    -------
    Tensor
        bool, shape (B, ..., T).
    """
    k_max = int(n_keep.max())
    kept = torch.zeros_like(logits, dtype=torch.bool)
    if bool((n_keep == k_max).all()):
        # Every row keeps k_max tokens (always so for patch tokens): the set is all that counts,
        # and an unsorted top-k finds the same set ~1.5x faster on CPU.
        return kept.scatter(-1, logits.topk(k_max, dim=-1, sorted=False).indices, True)
    top = logits.topk(k_max, dim=-1).indices  # (B, ..., k_max), best first
    rank = torch.arange(k_max, device=logits.device)
    wanted = rank < n_keep.view(-1, *[1] * (logits.ndim - 1))  # (B, 1.., k_max)
    return kept.scatter(-1, top, wanted.expand_as(top))


def _pack_bits(kept: Tensor) -> Tensor:
    """Pack boolean rows (..., T) into int64 words (..., ceil(T / 64)) for exact comparison.

    Bits become bytes (shift and add in uint8), and every 8 bytes are reinterpreted as one
    int64: exact on every device, unlike a float matrix product that TF32 could round.
    """
    n_tokens = kept.shape[-1]
    n_words = math.ceil(n_tokens / 64)
    bits = F.pad(kept.to(torch.uint8), (0, 64 * n_words - n_tokens))
    bits = bits.view(*kept.shape[:-1], 8 * n_words, 8)
    shifts = torch.arange(8, dtype=torch.uint8, device=kept.device)
    packed = (bits << shifts).sum(-1, dtype=torch.uint8)  # distinct powers of 2: no overflow
    return packed.view(torch.int64)


def drop_duplicates(kept: Tensor, score: Tensor) -> Tensor:
    """Set to -inf the score of every candidate whose token set a better one already has.

    Among candidates of one sample with identical token sets, the one with the highest score
    survives (the lowest index on ties). Rows are bit-packed and sorted lexicographically
    (sample, words, rank) with a few stable sorts, so duplicates end up adjacent; this avoids
    both comparing all pairs of candidates and ``torch.unique(dim=0)``, which is slow on CPU.

    Parameters
    ----------
    kept
        bool, shape (B, N, T); token sets of N candidates per sample.
    score
        Shape (B, N); -inf marks candidates that are already invalid.

    Returns
    -------
    Tensor
        Shape (B, N), ``score`` with duplicates set to -inf.
    """
    n_batch, n_candidates = score.shape
    sample = torch.arange(n_batch, device=score.device)[:, None].expand(n_batch, n_candidates)
    keys = torch.cat([sample[..., None], _pack_bits(kept)], dim=-1).flatten(0, 1)  # (BN, 1 + W)
    # Least significant key first: the rank by score, then the words, then the sample.
    order = score.flatten().argsort(descending=True, stable=True)
    for column in reversed(range(keys.shape[1])):
        order = order[keys[order, column].argsort(stable=True)]
    sorted_keys = keys[order]
    starts = torch.ones(len(order), dtype=torch.bool, device=score.device)
    starts[1:] = (sorted_keys[1:] != sorted_keys[:-1]).any(dim=1)
    is_first = torch.empty_like(starts).scatter_(0, order, starts).view(n_batch, n_candidates)
    return score.masked_fill(~is_first, -math.inf)


def suppress_overlaps(
    kept: Tensor, score: Tensor, n_groups: int, max_overlap: float
) -> tuple[Tensor, Tensor]:
    """Greedy choice of ``n_groups`` candidates, best first, none overlapping a better one much.

    Non-maximum suppression on token sets: take the best candidate, discard every candidate
    whose Jaccard index |a ∩ b| / |a ∪ b| with it is ``max_overlap`` or more (itself and its
    duplicates included), repeat. torchvision's ``batched_nms`` does this for boxes only, hence
    by hand; it loops over the m choices, each a batched (B, N, T) x (B, T) product.

    Parameters
    ----------
    kept
        bool, shape (B, N, T); token sets of N candidates per sample.
    score
        Shape (B, N); -inf marks candidates that are already invalid.
    n_groups
        Number m of candidates to choose.
    max_overlap
        Jaccard index in (0, 1] from which a candidate counts as a near-duplicate.

    Returns
    -------
    chosen : Tensor
        int64, shape (B, m); indices of the chosen candidates.
    valid : Tensor
        bool, shape (B, m); False where no candidate was left (index then 0, unused).
    """
    members = kept.to(torch.float32)
    sizes = members.sum(-1)  # (B, N)
    score = score.clone()
    rows = torch.arange(kept.shape[0], device=kept.device)
    chosen, valid = [], []
    for _ in range(n_groups):
        best = score.argmax(1)  # (B,)
        valid.append(score[rows, best].isfinite())
        chosen.append(torch.where(valid[-1], best, 0))
        group = members[rows, best]  # (B, T)
        shared = torch.bmm(members, group[:, :, None]).squeeze(-1)  # (B, N)
        jaccard = shared / (sizes + group.sum(-1, keepdim=True) - shared).clamp_min(1.0)
        score = score.masked_fill(jaccard >= max_overlap, -math.inf)
    return torch.stack(chosen, 1), torch.stack(valid, 1)


# -- masks --------------------------------------------------------------------------------------


class _StraightThrough(torch.autograd.Function):
    """Forward the hard 0/1 values unchanged; backward hand their gradient to the soft ones."""

    @staticmethod
    def forward(ctx, hard: Tensor, soft: Tensor) -> Tensor:
        return hard.clone()

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[None, Tensor]:
        return None, grad


def straight_through(hard: Tensor, soft: Tensor) -> Tensor:
    """Exactly ``hard`` in the forward pass, with the gradient of ``soft`` in the backward pass.

    Unlike the usual ``hard + soft - soft.detach()``, which can be off by one unit in the last
    place, the forward value is bit-for-bit ``hard``: a 0/1 mask stays exactly 0/1.
    """
    return _StraightThrough.apply(hard, soft)


def tokens_to_pixels(token_masks: Tensor, token_map: Tensor) -> Tensor:
    """Expand per-token mask values to pixels.

    Parameters
    ----------
    token_masks
        Shape (B, m, T); one value per group and token.
    token_map
        int64, shape (B, H, W); token index of every pixel, or :data:`CONTEXT`.

    Returns
    -------
    Tensor
        Shape (B, m, H, W), ``token_masks[b, i, token_map[b, y, x]]``, 0 on context pixels (they
        belong to no group; the backbone sees them anyway); differentiable with respect to
        ``token_masks``.
    """
    n_batch, n_groups, _ = token_masks.shape
    height, width = token_map.shape[-2:]
    context = (token_map == CONTEXT).reshape(n_batch, 1, height * width)
    index = token_map.clamp(min=0).reshape(n_batch, 1, height * width).expand(n_batch, n_groups, -1)
    values = token_masks.gather(2, index).masked_fill(context, 0.0)
    return values.view(n_batch, n_groups, height, width)
