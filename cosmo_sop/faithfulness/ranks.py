"""The order in which a faithfulness metric changes pixels or groups, and what ranks them.

Pixels are ranked by decreasing importance; ties (SOP gives every pixel outside its groups the
same zero weight, a token-aggregated map is constant over each token) are broken by a seeded
random order of the pixels, never by raster order, which would insert the top rows first. The
importance a method ranks by is the magnitude of its attribution summed over bins
(:func:`ranking_importance`, ``"absolute"``; ``"signed"`` as an option), optionally aggregated to
SOP's tokens (:func:`token_aggregate`); sparsity is one definition for every method
(:func:`mass_fraction`), SOP's taken of its groups' contributions to the prediction
(:func:`group_contributions`, :func:`contribution_sparsity`), the quantity a baseline's
attribution measures. The groups of a method that does not score groups itself are ordered by
the importance inside them.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from torch import Tensor

from cosmo_sop.attribution.registry import group_pixel_importance
from cosmo_sop.faithfulness.inputs import check_choice

GroupReduce = Literal["mean", "sum"]
Ranking = Literal["absolute", "signed"]


def tie_order(n_maps: int, n_pixels: int, seed: int) -> Tensor:
    """A seeded random permutation of the pixels of every map, shape (N, P) int64.

    Map n's permutation depends only on ``seed``, ``n`` and P (not on the other maps), so every
    method evaluated on the same maps with the same seed breaks its ties the same way.
    """
    keys = np.stack(
        [np.random.default_rng([int(seed), n, n_pixels]).random(n_pixels) for n in range(n_maps)]
    )
    return torch.from_numpy(np.argsort(keys, axis=1, kind="stable")).reshape(n_maps, n_pixels)


def pixel_ranks(importance: Tensor | np.ndarray, tie_seed: int | None = None) -> Tensor:
    """Rank of every pixel by decreasing importance, 0 = most important; shape (N, H, W) int64.

    Parameters
    ----------
    importance
        (N, H, W) pixel importance (any unit; larger ranks first).
    tie_seed
        Ties are broken by the seeded random pixel order of :func:`tie_order` (deterministic
        for a seed); None: by row-major order (only for tests and callers that want it).
    """
    importance = torch.as_tensor(importance)
    if importance.ndim != 3:
        raise ValueError(f"importance must have shape (N, H, W), got {tuple(importance.shape)}")
    flat = importance.flatten(1)
    if tie_seed is None:
        order = torch.argsort(flat, dim=1, descending=True, stable=True)
    else:
        # A stable sort of the pixels taken in a random order keeps that order among ties.
        shuffle = tie_order(flat.shape[0], flat.shape[1], tie_seed).to(flat.device)
        within = torch.argsort(flat.gather(1, shuffle), dim=1, descending=True, stable=True)
        order = shuffle.gather(1, within)
    ranks = torch.empty_like(order)
    positions = torch.arange(flat.shape[1], device=flat.device).expand_as(order)
    return ranks.scatter_(1, order, positions).view(importance.shape)


def group_scores_from_importance(
    importance: Tensor | np.ndarray, masks: Tensor | np.ndarray, reduce: GroupReduce = "mean"
) -> Tensor:
    """Score of every group under a pixel attribution: its mean (or summed) importance.

    Used to order the groups of a method that does not score groups itself.

    Parameters
    ----------
    importance
        (N, H, W) pixel importance.
    masks
        bool (N, m, H, W) group masks.
    reduce
        "mean" (favours small, concentrated groups) or "sum" (favours large groups).

    Returns
    -------
    Tensor
        float64 (N, m); NaN for empty groups.
    """
    check_choice("reduce", reduce, ("mean", "sum"))
    importance = torch.as_tensor(importance)
    masks = torch.as_tensor(masks, device=importance.device)
    matching = masks.ndim == 4 and (masks.shape[0], *masks.shape[2:]) == importance.shape
    if importance.ndim != 3 or not matching:
        raise ValueError(
            f"masks {tuple(masks.shape)} and importance {tuple(importance.shape)} must be "
            "(N, m, H, W) and (N, H, W)"
        )
    weights = masks.to(torch.float64)
    total = torch.einsum("bmhw,bhw->bm", weights, importance.to(torch.float64))
    if reduce == "sum":
        return total.masked_fill(~masks.flatten(2).any(-1), float("nan"))
    return total / weights.sum((2, 3))  # 0 / 0 = NaN for empty groups


def ranking_importance(attribution: Tensor | np.ndarray, ranking: Ranking = "absolute") -> Tensor:
    """The pixel importance a method is ranked by, from its attribution (N, C, H, W).

    ``"absolute"``: sum over bins of |attribution| (a pixel that pulls the output down is as
    important as one that pushes it up, which is what an absolute-error score asks);
    ``"signed"``: the signed sum over bins (inserts negative evidence last). Returns float64
    (N, H, W) in the attribution's unit.
    """
    check_choice("ranking", ranking, ("absolute", "signed"))
    attribution = torch.as_tensor(attribution).to(torch.float64)
    if attribution.ndim != 4:
        raise ValueError(f"attribution must be (N, C, H, W), got {tuple(attribution.shape)}")
    return attribution.abs().sum(1) if ranking == "absolute" else attribution.sum(1)


def token_aggregate(
    importance: Tensor | np.ndarray, token_map: Tensor | np.ndarray, reduce: GroupReduce = "mean"
) -> Tensor:
    """Every pixel gets its token's mean (or summed) importance: a pixel map at SOP's resolution.

    Parameters
    ----------
    importance
        (N, H, W) pixel importance.
    token_map
        int (H, W) or (N, H, W): the token (cell of the patch grid, or watershed segment) of
        every pixel, labels >= 0.
    reduce
        "mean" or "sum" of the importance over the token's pixels.

    Returns
    -------
    Tensor
        float64 (N, H, W), constant over each token.
    """
    check_choice("reduce", reduce, ("mean", "sum"))
    importance = torch.as_tensor(importance).to(torch.float64)
    labels = torch.as_tensor(token_map, device=importance.device).to(torch.int64)
    if labels.ndim == 2:
        labels = labels.expand(importance.shape[0], -1, -1)
    if labels.shape != importance.shape or bool((labels < 0).any()):
        raise ValueError(
            f"token_map {tuple(labels.shape)} must be (H, W) or (N, H, W) labels >= 0 for "
            f"importance {tuple(importance.shape)}"
        )
    flat, codes = importance.flatten(1), labels.flatten(1)
    n_tokens = int(codes.max()) + 1
    sums = flat.new_zeros(flat.shape[0], n_tokens).scatter_add_(1, codes, flat)
    if reduce == "mean":
        sizes = flat.new_zeros(flat.shape[0], n_tokens).scatter_add_(
            1, codes, torch.ones_like(flat)
        )
        sums = sums / sizes.clamp(min=1)
    return sums.gather(1, codes).view(importance.shape)


def mass_fraction(importance: Tensor | np.ndarray, mass: float) -> np.ndarray:
    """Sparsity: the smallest fraction of pixels that holds ``mass`` of the |importance| mass.

    One definition for every method (lower is sparser): the pixels are taken in decreasing
    |importance| until their sum reaches ``mass`` (e.g. 0.9) of the map's total.

    Parameters
    ----------
    importance
        (N, H, W) pixel importance (its magnitude is used).
    mass
        Fraction of the total in (0, 1].

    Returns
    -------
    ndarray
        float64 (N,) in (0, 1]; NaN for a map without any importance.
    """
    if not 0.0 < float(mass) <= 1.0:
        raise ValueError(f"mass must lie in (0, 1], got {mass!r}")
    flat = torch.as_tensor(importance).to(torch.float64).abs().flatten(1)
    ordered = torch.sort(flat, dim=1, descending=True).values
    total = ordered.sum(1, keepdim=True)
    # Pixels needed: 1 + the number whose running sum is still short of the target (a relative
    # tolerance keeps the count stable under float round-off when the target is hit exactly).
    short = ordered.cumsum(1) < float(mass) * total * (1 - 1e-12)
    needed = (short.sum(1) + 1).clamp(max=flat.shape[1]).to(torch.float64)
    fraction = (needed / flat.shape[1]).numpy()
    return np.where(total[:, 0].numpy() > 0, fraction, np.nan)


def group_contributions(
    scores: Tensor | np.ndarray,
    partial: Tensor | np.ndarray,
    substrate_prediction: Tensor | np.ndarray,
    valid: Tensor | np.ndarray | None = None,
) -> Tensor:
    """SOP's contribution of every group to every output: c_i (y_i - h(s)).

    The weights c_i of an output sum to 1 over the groups, so the contributions sum to
    f_SOP(x) - h(s), as Integrated Gradients' attributions sum to f(x) - f(0): the quantity,
    and the units, of a baseline's attribution. (|c_i y_i| counted the distance of every partial
    prediction from 0, so an output whose substrate prediction h(s) is not 0 gave every group
    importance by that offset alone.)

    Parameters
    ----------
    scores
        (N, m, n_outputs) group weights c >= 0 (``Explanation.scores``).
    partial
        (N, m, n_outputs) y_i = h(g_i x), the backbone on each group's pixels alone (the
        substrate elsewhere), standardised units (``Explanation.partial``).
    substrate_prediction
        (N, n_outputs) h(s), the backbone on the substrate alone, standardised units
        (:func:`~cosmo_sop.faithfulness.substrates.substrate_prediction`).
    valid
        bool (N, m) or None (all valid); invalid groups contribute 0.

    Returns
    -------
    Tensor
        float64 (N, m, n_outputs), standardised units.
    """
    scores = torch.as_tensor(scores).to(torch.float64)
    partial = torch.as_tensor(partial, device=scores.device).to(torch.float64)
    reference = torch.as_tensor(substrate_prediction, device=scores.device).to(torch.float64)
    per_map = (scores.shape[0], scores.shape[-1])
    if scores.ndim != 3 or partial.shape != scores.shape or reference.shape != per_map:
        raise ValueError(
            f"scores {tuple(scores.shape)} and partial {tuple(partial.shape)} must be "
            f"(N, m, n_outputs) and substrate_prediction {tuple(reference.shape)} (N, n_outputs)"
        )
    contribution = scores * (partial - reference[:, None, :])
    if valid is not None:
        valid = torch.as_tensor(valid, device=scores.device).to(torch.bool)
        contribution = contribution.masked_fill(~valid[:, :, None], 0.0)
    return contribution


def contribution_sparsity(
    masks: Tensor | np.ndarray, contributions: Tensor | np.ndarray, mass: float
) -> np.ndarray:
    """SOP's sparsity per map and output: :func:`mass_fraction` of its pixel attribution.

    A pixel's attribution is the sum of |contribution| over the groups holding it.

    Parameters
    ----------
    masks
        bool (N, m, H, W) group masks.
    contributions
        (N, m, n_outputs) from :func:`group_contributions`.
    mass
        As in :func:`mass_fraction`.

    Returns
    -------
    ndarray
        float64 (N, n_outputs) in (0, 1]; NaN where a map's contributions are all 0.
    """
    contributions = torch.as_tensor(contributions).abs()
    return np.stack(
        [
            mass_fraction(group_pixel_importance(masks, contributions[..., o]), mass)
            for o in range(contributions.shape[-1])
        ],
        axis=1,
    )
