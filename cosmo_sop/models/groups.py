"""The parts of a Sum-of-Parts prediction: which groups to form, and how much each counts.

:class:`GroupGenerator` turns tokens into m candidate feature groups per input (binarised rows
of a multi-head self-attention, the best distinct ones kept); :class:`GroupSelector` scores the
backbone's embeddings of the masked inputs with one sparse query per output. Both are trained;
:class:`~cosmo_sop.models.sop.SumOfParts` puts them around the frozen backbone and returns the
groups, scores and partial predictions behind each prediction as an :class:`Explanation`.

Choices that differ from the authors' code (github.com/BrachioLab/exlib):

- Groups are chosen at token level, by a score (the row's attention mass on its kept tokens)
  with duplicates removed (or near-duplicates, by Jaccard index, with ``max_overlap`` < 1),
  and only the m chosen ones become pixel masks. The reference code
  expanded every one of the heads x tokens candidates to full resolution before keeping m at
  fixed candidate indices.
- Gradients reach the generator through a straight-through estimator instead of the paper's
  scale factor, so that every partial prediction is exactly the backbone's (see
  :meth:`GroupGenerator.forward`).
- Masks are exactly 0/1 and groups with no distinct candidate left are marked invalid and
  skipped, rather than repeated.
- The selector's queries may start at zero (``selector_init: uniform``), so an untrained
  selector averages the groups instead of favouring the largest partial predictions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F
from entmax import entmax15, sparsemax
from torch import Tensor, nn

from cosmo_sop.batch_shard import draw_rows
from cosmo_sop.models.tokens import (
    drop_duplicates,
    keep_top_tokens,
    n_kept_tokens,
    straight_through,
    suppress_overlaps,
)

Normalisation = Literal["sparsemax", "softmax"]
SelectorInit = Literal["uniform", "backbone"]
SelectorNormalisation = Literal["sparsemax", "entmax15", "softmax"]


@dataclass
class Explanation:
    """Prediction of a :class:`~cosmo_sop.models.sop.SumOfParts` model together with its parts.

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
        Normalisation of the attention rows, "sparsemax" or "softmax". Softmax passes
        gradient to every token of a row; sparsemax only to the tokens of its support.
    max_overlap
        Candidates are taken best first, and one whose Jaccard index with a group already
        taken is ``max_overlap`` or more is passed over; 1.0 passes over identical sets only.
    """

    def __init__(
        self,
        token_dim: int,
        d_model: int,
        n_heads: int,
        n_groups: int,
        keep_fraction: float,
        attention: Normalisation,
        max_overlap: float,
    ) -> None:
        super().__init__()
        self.max_overlap = max_overlap
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
        if self.max_overlap < 1.0:
            chosen, group_valid = suppress_overlaps(kept, score, self.n_groups, self.max_overlap)
        else:
            chosen, group_valid = _best_distinct(kept, score, self.n_groups)
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


def _best_distinct(kept: Tensor, score: Tensor, n_groups: int) -> tuple[Tensor, Tensor]:
    """The ``n_groups`` best candidates with distinct token sets: indices (B, m) and validity.

    Fewer distinct candidates than m leave invalid groups, whose index points at a candidate
    that is never used (its tokens are cleared by the caller).
    """
    score = drop_duplicates(kept, score)
    n_candidates = score.shape[1]
    if n_candidates < n_groups:
        score = F.pad(score, (0, n_groups - n_candidates), value=-math.inf)
    chosen = score.argsort(dim=1, descending=True, stable=True)[:, :n_groups]
    valid = score.gather(1, chosen).isfinite()
    return chosen.clamp_max(n_candidates - 1), valid


class GroupSelector(nn.Module):
    """Sparse cross-attention from one query per output over the group embeddings.

    With a fixed query per output, attention's query and key projections compose into a single
    vector per output, so that vector is the parameter. Two initialisations:

    - ``"uniform"``: zero queries, so every valid group gets the same logit and an untrained
      selector averages the groups (sparsemax and softmax of equal logits are uniform). Its
      choices are then all learnt, with no bias towards any group.
    - ``"backbone"``: the output's row of the backbone's output layer, as in the paper: the
      initial logit of a group is the backbone's own output on it (less the bias), which
      favours the groups with the largest partial prediction, a max of noisy estimates.

    A learnable temperature, exp(``log_temperature``) starting at 1, scales the logits, so the
    selector can learn how peaked its scores are without changing the queries' direction.

    Parameters
    ----------
    output_weight
        Shape (n_outputs, E), e.g. ``backbone.head.weight``; copied, not shared.
    init
        ``"uniform"`` or ``"backbone"``.
    normalisation
        ``"sparsemax"``, ``"entmax15"`` (sparse, smoother) or ``"softmax"`` (dense) over the groups.
    """

    def __init__(
        self,
        output_weight: Tensor,
        init: SelectorInit,
        normalisation: SelectorNormalisation,
    ) -> None:
        super().__init__()
        queries = output_weight.detach().clone()
        if init == "uniform":
            queries.zero_()
        self.queries = nn.Parameter(queries)
        self.log_temperature = nn.Parameter(torch.zeros(()))
        self.normalisation = normalisation

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
        logits = logits * self.log_temperature.exp()
        logits = logits.masked_fill(~valid[:, :, None], -math.inf)
        if self.normalisation == "sparsemax":
            return sparsemax(logits, dim=1)
        if self.normalisation == "entmax15":
            return entmax15(logits, dim=1)
        return torch.softmax(logits, dim=1)


def sample_groups(groups: Groups, n_sampled: int) -> Groups:
    """A random ``n_sampled`` of each input's groups, valid ones first (global torch RNG, which
    the trainer seeds per epoch; drawn for the whole global batch in a data-parallel run, see
    :mod:`cosmo_sop.batch_shard`)."""
    n_batch, n_groups = groups.valid.shape
    device = groups.valid.device
    # Invalid groups draw from [1, 2), so every valid group sorts before them.
    uniform = draw_rows(lambda k: torch.rand(k, n_groups, device=device), n_batch)
    draw = uniform + (~groups.valid).float()
    keep = draw.argsort(dim=1)[:, :n_sampled]
    index = keep[:, :, None].expand(-1, -1, groups.tokens.shape[-1])
    return Groups(
        groups.tokens.gather(1, index), groups.masks.gather(1, index), groups.valid.gather(1, keep)
    )
