"""Null controls for the void/cluster verdicts: what the weight ratios are without learning.

A weight ratio that agrees with the paper may come from how the model starts, or from how the
groups are drawn, rather than from training. The structures step therefore weighs, beside the
trained SOP's groups, the groups and scores of the nulls of ``structures.nulls`` (by default
``uniform`` and ``random``, the nulls of the two hypotheses of
:mod:`~cosmo_sop.structures.findings`, which tests each class against them), on the same maps,
with the same definitions and the same bootstrap draws:

``initial`` (on request)
    The SOP at initialisation, rebuilt around the trained model's frozen backbone with
    :meth:`~cosmo_sop.models.sop.SumOfParts.from_config` under the seed the training
    initialised it with (:func:`initial_sop`): its own groups and its own scores.
``uniform``
    The trained SOP's groups with equal scores, 1 / (valid groups), for every output
    (:func:`uniform_scores`). Every class then weighs the same for Omega_m and sigma_8: its
    ratio is exactly 1, so this null is the "interval excludes 1" test.
``random``
    Random groups of the trained groups' sizes on the same token grid (:func:`random_groups`),
    scored by the *trained* selector on the backbone's embeddings of the masked maps
    (:func:`selector_scores`): what the selector makes of groups that no generator chose.

Needs PyTorch (not imported by :mod:`cosmo_sop.structures`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from cosmo_sop.errors import InputError
from cosmo_sop.models.sop import SumOfParts
from cosmo_sop.models.tokens import tokens_to_pixels
from cosmo_sop.models.trained import TrainedSOP
from cosmo_sop.training.loop import derived_seed
from cosmo_sop.training.runs import INIT_PURPOSE

#: The nulls, in the order the records and the report list them.
NULLS: tuple[str, ...] = ("initial", "uniform", "random")
#: The seed stream under which ``cosmo_sop.training.runs.train_sop`` initialises SOP.
INIT_STREAM = INIT_PURPOSE
#: The seed stream of the random groups (any value other than the training's streams).
RANDOM_STREAM = 811


@dataclass
class NullGroups:
    """One null's groups on a chunk of maps.

    Attributes
    ----------
    masks : ndarray of bool, (N, m, H, W)
    scores : ndarray, (N, m, n_out)
        Weights >= 0, summing to one over the valid groups of a map for every output.
    valid : ndarray of bool, (N, m)
    """

    masks: np.ndarray
    scores: np.ndarray
    valid: np.ndarray


def check_nulls(names: Sequence[str]) -> tuple[str, ...]:
    """The requested nulls in :data:`NULLS` order, or InputError naming the config key."""
    unknown = sorted(set(names) - set(NULLS))
    if unknown:
        raise InputError("config key 'structures.nulls'", f"unknown null(s) {unknown}; {NULLS}")
    return tuple(n for n in NULLS if n in names)


def initial_sop(trained: TrainedSOP, seed: int) -> SumOfParts:
    """The SOP as training initialised it, around the trained model's (frozen) backbone.

    ``train_sop`` builds the model with ``SumOfParts.from_backbone`` under
    ``torch.manual_seed(derived_seed(seed, INIT_STREAM))``, the token encoder a copy of the
    trained backbone's first blocks; :meth:`SumOfParts.from_config` with the trained model's
    config makes the same calls in the same order, so, given the training's config ``seed``, the
    weights are the initial ones exactly (as long as the model code is the one it was trained
    with). The caller's global torch RNG is left untouched.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derived_seed(int(seed), INIT_STREAM))
        model = SumOfParts.from_config(trained.model.backbone, trained.model.config)
    return model.eval()


def uniform_scores(valid: np.ndarray, n_outputs: int) -> np.ndarray:
    """Equal scores 1 / (valid groups of the map) for every valid group and output, (N, m, O)."""
    valid = np.asarray(valid, dtype=bool)
    n_valid = valid.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        share = np.where(valid, 1.0 / n_valid, 0.0)
    return np.repeat(share[..., None], int(n_outputs), axis=-1)


def random_groups(
    sizes: np.ndarray, token_valid: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """Random token sets: group j of map i holds ``sizes[i, j]`` distinct valid tokens.

    Parameters
    ----------
    sizes
        int (N, m): tokens per group (those of the trained groups; 0 gives an empty group).
    token_valid
        bool (N, T): the tokens a map has (all for a patch grid; its segments otherwise).
    rng
        The draws (one uniform key per map, group and token; the smallest keys are kept).

    Returns
    -------
    ndarray
        bool (N, m, T).
    """
    sizes = np.asarray(sizes, dtype=np.int64)
    n, m = sizes.shape
    keys = rng.random((n, m, token_valid.shape[1]))
    keys[~np.broadcast_to(token_valid[:, None, :], keys.shape)] = np.inf  # never drawn
    rank = np.argsort(np.argsort(keys, axis=-1, kind="stable"), axis=-1, kind="stable")
    return rank < np.minimum(sizes, token_valid.sum(axis=1)[:, None])[..., None]


@torch.inference_mode()
def selector_scores(
    model: SumOfParts, x: torch.Tensor, masks: torch.Tensor, valid: torch.Tensor
) -> np.ndarray:
    """The model's selector scores (N, m, O) of given groups, from the backbone's embeddings
    of the masked maps (valid groups only, in batches of ``model.max_backbone_batch``)."""
    sample, group = valid.nonzero(as_tuple=True)
    masked = x[sample] * masks[sample, group].unsqueeze(1).to(x.dtype)
    embedded = [model.backbone.embed(chunk) for chunk in masked.split(model.max_backbone_batch)]
    embeddings = x.new_zeros(*valid.shape, embedded[0].shape[-1] if embedded else 1)
    if embedded:
        embeddings = embeddings.index_put((sample, group), torch.cat(embedded))
    return model.selector(embeddings, valid).double().numpy()


def token_map(model: SumOfParts, x: torch.Tensor, segments: np.ndarray | None) -> torch.Tensor:
    """int64 (N, H, W): each pixel's token, the patch grid's cell or its segment label."""
    if model.tokens == "patches":
        return model.token_map(x)
    if segments is None:
        raise InputError("null controls", "a segment-token SOP needs the segments store")
    return model.token_map(x, torch.as_tensor(np.asarray(segments, dtype=np.int64)))


@torch.inference_mode()
def null_groups(
    names: Sequence[str],
    kappa: np.ndarray,
    segments: np.ndarray | None,
    trained: TrainedSOP | None,
    initial: SumOfParts | None,
    groups: Mapping[str, np.ndarray],
    rng: np.random.Generator,
) -> dict[str, NullGroups]:
    """The groups and scores of every requested null on one chunk of maps.

    Parameters
    ----------
    names
        Nulls among :data:`NULLS`.
    kappa
        The maps (N, C, H, W), physical units, as explained.
    segments
        Their segment labels (N, H, W) for a segment-token SOP, else None.
    trained
        The trained SOP (its selector scores the random groups; needed for ``"random"``).
    initial
        :func:`initial_sop` (needed for ``"initial"``).
    groups
        The trained SOP's groups from the explanation store: ``masks`` (N, m, H, W), ``valid``
        (N, m), ``scores`` (N, m, n_out), ``tokens`` (N, m, T) (its ``group_tokens`` /
        ``group_segments``).
    rng
        Draws of the random groups.
    """
    x = torch.as_tensor(np.asarray(kappa, dtype=np.float32))
    valid = np.asarray(groups["valid"], dtype=bool)
    n_out = np.asarray(groups["scores"]).shape[-1]
    out: dict[str, NullGroups] = {}
    if "initial" in names:
        seg = None if segments is None else torch.as_tensor(np.asarray(segments, np.int64))
        parts = initial.explain(x, seg if initial.tokens == "segments" else None)
        out["initial"] = NullGroups(
            parts.masks.numpy(), parts.scores.double().numpy(), parts.valid.numpy()
        )
    if "uniform" in names:
        out["uniform"] = NullGroups(
            np.asarray(groups["masks"], bool), uniform_scores(valid, n_out), valid
        )
    if "random" in names:
        model = trained.model
        cells = token_map(model, x, segments)
        tokens = np.asarray(groups["tokens"], dtype=bool)
        present = np.zeros((x.shape[0], tokens.shape[-1]), dtype=bool)
        labels = cells.reshape(x.shape[0], -1).numpy()
        present[np.arange(x.shape[0])[:, None], labels] = True
        drawn = random_groups(tokens.sum(axis=-1) * valid, present, rng)
        masks = tokens_to_pixels(torch.as_tensor(drawn), cells).bool()
        random_valid = torch.as_tensor(valid & drawn.any(axis=-1))
        scores = selector_scores(model, x, masks, random_valid)
        out["random"] = NullGroups(masks.numpy(), scores, random_valid.numpy())
    return out
