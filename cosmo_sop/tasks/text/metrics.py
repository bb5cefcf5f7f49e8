"""Rationale metrics of ERASER (DeYoung et al., ACL 2020) for SOP and its baselines.

A *rationale* is a set of segments (clauses) of one example's passage; as spans it is the
clauses' token ranges, consecutive selected clauses of one sentence merged into one span
(spans never cross a sentence, like MultiRC's gold evidence). Definitions follow the
benchmark's ``rationale_benchmark/metrics.py``:

IOU F1 (``partial_match_score``, threshold 0.5, the "macro" numbers)
    A predicted span is a true positive when its best intersection-over-union (over token
    sets) with any gold span of the same example is at least 0.5. Per example, precision is
    TP / predicted spans and recall TP / gold spans (ERASER counts TP over predictions for
    both); IOU F1 is the F1 of the *mean* precision and the *mean* recall over examples.
Token F1 (``score_hard_rationale_predictions``, "instance_macro")
    Per example, the F1 of the predicted against the gold token sets (0 when either is empty);
    token F1 is its mean over examples.
Comprehensiveness and sufficiency (``score_classifications``)
    p(ŷ | x) - p(ŷ | x without the rationale) and p(ŷ | x) - p(ŷ | the rationale only), with ŷ
    the model's predicted class on x. Removing a segment here masks it (its tokens become
    [PAD], as SOP masks); the context (question, answer, special tokens) stays in both.
    High comprehensiveness and low sufficiency mean a faithful rationale.

Intervals resample documents (the passage, shared by the questions on it) with
:mod:`cosmo_sop.statistics`; IOU F1, a function of two means, is recomputed on every
replicate from the replicate's mean precision and recall.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from cosmo_sop.statistics import percentile_interval, replicate_sums, resample_counts

#: IOU from which a predicted span matches a gold span (ERASER's threshold).
IOU_THRESHOLD = 0.5

Span = tuple[int, int]


# -- choosing segments ----------------------------------------------------------------------------


def top_group_segments(
    scores: Tensor, group_tokens: Tensor, valid: Tensor, predicted: Tensor
) -> Tensor:
    """Segments of each example's highest-scored valid group for its predicted class.

    Parameters
    ----------
    scores
        (B, m, K) group scores of SOP.
    group_tokens
        bool (B, m, T): segments of each group.
    valid
        bool (B, m).
    predicted
        int64 (B,): the class whose scores are read.

    Returns
    -------
    Tensor
        bool (B, T).
    """
    index = predicted.view(-1, 1, 1).expand(-1, scores.shape[1], 1)
    score = scores.gather(2, index).squeeze(2).masked_fill(~valid, -torch.inf)
    best = score.argmax(1)
    return group_tokens[torch.arange(len(best)), best]


def summed_segment_scores(scores: Tensor, group_tokens: Tensor, predicted: Tensor) -> Tensor:
    """Score of every segment: the sum of the scores (for the predicted class) of its groups.

    Returns
    -------
    Tensor
        float (B, T).
    """
    index = predicted.view(-1, 1, 1).expand(-1, scores.shape[1], 1)
    score = scores.gather(2, index)  # (B, m, 1)
    return (score * group_tokens.to(score.dtype)).sum(1)


def top_k_segments(
    segment_scores: Tensor, k: Tensor, n_segments: Tensor, generator: torch.Generator
) -> Tensor:
    """The ``k[b]`` highest-scored of each example's ``n_segments[b]`` segments.

    Ties are broken in a seeded random order (a small random key below the score), so a
    method with many equal scores is not favoured by segment order.

    Returns
    -------
    Tensor
        bool (B, T).
    """
    n_batch, n_tokens = segment_scores.shape
    present = torch.arange(n_tokens)[None, :] < n_segments[:, None]
    jitter = torch.rand(n_batch, n_tokens, generator=generator)
    # Rank by (score, jitter): sort by jitter first, then stably by score.
    by_jitter = jitter.argsort(dim=1, descending=True)
    keyed = segment_scores.masked_fill(~present, -torch.inf).gather(1, by_jitter)
    by_score = keyed.argsort(dim=1, descending=True, stable=True)
    ranked = by_jitter.gather(1, by_score)  # segment indices, best first
    rank_of = torch.empty_like(ranked).scatter_(
        1, ranked, torch.arange(n_tokens).expand(n_batch, -1).contiguous()
    )
    return (rank_of < k[:, None]) & present


def random_segments(
    k: Tensor, n_segments: Tensor, n_tokens: int, generator: torch.Generator
) -> Tensor:
    """``k[b]`` segments of each example drawn uniformly without replacement, bool (B, T)."""
    scores = torch.zeros(len(k), n_tokens)
    return top_k_segments(scores, k, n_segments, generator)


def keep_segments(x: Tensor, segments: Tensor, kept: Tensor) -> Tensor:
    """``x`` (B, C, 1, L) with every segment not in ``kept`` (bool (B, T)) masked to 0 ([PAD]);
    context positions (label -1) are always kept."""
    labels = segments[:, 0]  # (B, L)
    keep = kept.gather(1, labels.clamp(min=0)) | (labels < 0)
    return x * keep[:, None, None, :].to(x.dtype)


def comprehensiveness_sufficiency(
    probability: Tensor, without: Tensor, only: Tensor, predicted: Tensor
) -> tuple[Tensor, Tensor]:
    """ERASER's per-example comprehensiveness and sufficiency.

    Parameters
    ----------
    probability, without, only
        (B, K) class probabilities on the whole input, without the rationale, and on the
        rationale (with the context) only.
    predicted
        int64 (B,): the predicted class on the whole input.

    Returns
    -------
    comprehensiveness, sufficiency : Tensor
        (B,): p(ŷ|x) - p(ŷ|x without rationale) and p(ŷ|x) - p(ŷ|rationale only).
    """
    index = predicted[:, None]
    p = probability.gather(1, index)[:, 0]
    return p - without.gather(1, index)[:, 0], p - only.gather(1, index)[:, 0]


# -- spans --------------------------------------------------------------------------------------


def rationale_spans(selected: np.ndarray, clauses: np.ndarray) -> list[Span]:
    """Token spans of the selected segments of one example.

    Parameters
    ----------
    selected
        bool (T,): selected segments (padded beyond the example's own).
    clauses
        int64 (K, 4): (start_token, end_token, sentence, segment) of the example's clauses.

    Returns
    -------
    list of (start, end)
        Consecutive selected clauses of one sentence merged, in passage order.
    """
    spans: list[Span] = []
    last_sentence = -1
    for start, end, sentence, segment in clauses:
        if not selected[segment]:
            last_sentence = -1
            continue
        if spans and sentence == last_sentence and spans[-1][1] == start:
            spans[-1] = (spans[-1][0], int(end))
        else:
            spans.append((int(start), int(end)))
        last_sentence = sentence
    return spans


def _tokens(spans: Sequence[Span]) -> set[int]:
    return {t for start, end in spans for t in range(start, end)}


def _f1(precision: float, recall: float) -> float:
    return 0.0 if precision == 0 or recall == 0 else 2 * precision * recall / (precision + recall)


def token_f1(predicted: Sequence[Span], gold: Sequence[Span]) -> float:
    """ERASER's per-example token F1 of predicted against gold spans."""
    p, g = _tokens(predicted), _tokens(gold)
    precision = len(p & g) / len(p) if p else 0.0
    recall = len(p & g) / len(g) if g else 0.0
    return _f1(precision, recall)


def iou_precision_recall(
    predicted: Sequence[Span], gold: Sequence[Span], threshold: float = IOU_THRESHOLD
) -> tuple[float, float]:
    """ERASER's per-example IOU precision and recall (TP: predicted spans whose best IOU with
    a gold span is at least ``threshold``)."""
    gold_sets = [set(range(s, e)) for s, e in gold]
    tp = 0
    for start, end in predicted:
        span = set(range(start, end))
        best = max((len(span & g) / len(span | g) for g in gold_sets), default=0.0)
        tp += best >= threshold
    precision = tp / len(predicted) if predicted else 0.0
    recall = tp / len(gold) if gold else 0.0
    return precision, recall


# -- intervals ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Estimate:
    """A point estimate with its document-bootstrap percentile interval (95 %)."""

    estimate: float
    low: float
    high: float

    def excludes_zero(self) -> bool:
        """Whether the interval lies on one side of zero."""
        return self.low > 0 or self.high < 0

    def text(self, digits: int = 3) -> str:
        """``estimate [low, high]``."""
        return f"{self.estimate:.{digits}f} [{self.low:.{digits}f}, {self.high:.{digits}f}]"


def _replicate_means(values: np.ndarray, docids: Sequence[str], counts: np.ndarray) -> np.ndarray:
    """(n_boot, ...) means of ``values`` (N, ...) over each replicate's drawn documents."""
    sums = replicate_sums(values, docids, counts)
    n = replicate_sums(np.ones(len(values)), docids, counts)
    return sums / n.reshape(-1, *[1] * (sums.ndim - 1))


def mean_estimate(values: np.ndarray, docids: Sequence[str], n_boot: int, seed: int) -> Estimate:
    """Mean of per-example ``values`` (N,) with its document-bootstrap interval."""
    counts = resample_counts(docids, n_boot, seed)
    low, high = percentile_interval(_replicate_means(np.asarray(values, float), docids, counts))
    return Estimate(float(np.mean(values)), float(low), float(high))


def iou_f1_estimate(
    precision: np.ndarray, recall: np.ndarray, docids: Sequence[str], n_boot: int, seed: int
) -> Estimate:
    """ERASER's IOU F1, F1(mean precision, mean recall), with its document-bootstrap interval."""
    counts = resample_counts(docids, n_boot, seed)
    means = _replicate_means(np.stack([precision, recall], 1), docids, counts)
    replicates = _f1_array(means[:, 0], means[:, 1])
    low, high = percentile_interval(replicates)
    return Estimate(_f1(float(np.mean(precision)), float(np.mean(recall))), float(low), float(high))


def iou_f1_difference(
    a: tuple[np.ndarray, np.ndarray],
    b: tuple[np.ndarray, np.ndarray],
    docids: Sequence[str],
    n_boot: int,
    seed: int,
) -> Estimate:
    """IOU F1 of rationale ``a`` minus that of ``b`` (each (precision, recall) per example),
    paired: every replicate draws the same documents for both."""
    counts = resample_counts(docids, n_boot, seed)
    means = _replicate_means(np.stack([*a, *b], 1), docids, counts)
    replicates = _f1_array(means[:, 0], means[:, 1]) - _f1_array(means[:, 2], means[:, 3])
    low, high = percentile_interval(replicates)
    estimate = _f1(float(np.mean(a[0])), float(np.mean(a[1]))) - _f1(
        float(np.mean(b[0])), float(np.mean(b[1]))
    )
    return Estimate(estimate, float(low), float(high))


def _f1_array(precision: np.ndarray, recall: np.ndarray) -> np.ndarray:
    total = precision + recall
    return np.where(total > 0, 2 * precision * recall / np.where(total > 0, total, 1), 0.0)
