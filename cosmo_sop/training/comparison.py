"""SOP against its backbone on the test split, and choices between trained variants.

The test maps of one cosmology are correlated (patches of one simulation), so the interval of
the MSE ratio comes from a bootstrap over cosmologies (:mod:`cosmo_sop.statistics`): a ratio
whose interval lies above 1 is a real loss of accuracy, not test-split noise. A choice between
variants (the benchmarks' settings) is made on the validation split alone
(:func:`choose_on_validation`), so the test numbers reported for the chosen one are not
optimistic.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from cosmo_sop.errors import InputError
from cosmo_sop.statistics import bootstrap_ratio_of_means


def read_test_predictions(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """The arrays of a run's ``test_predictions.npz`` (sample, predictions, targets, names)."""
    try:
        with np.load(path) as stored:
            return {key: stored[key] for key in ("sample", "predictions", "targets", "names")}
    except (OSError, KeyError, ValueError) as error:
        raise InputError(path, f"not a test_predictions file ({error})") from None


def mse_ratio_to_backbone(
    sop: dict[str, Any],
    backbone: dict[str, np.ndarray],
    cosmologies: np.ndarray,
    n_boot: int,
    seed: int,
    where: str | os.PathLike,
) -> dict[str, Any]:
    """Test MSE of SOP over that of the backbone, per output, with cosmology-bootstrap CIs.

    Parameters
    ----------
    sop, backbone
        ``sample`` (N,), ``predictions`` and ``targets`` (N, n_outputs) of the same test maps,
        and ``names`` of the outputs.
    cosmologies
        Shape (N,), the cosmology of each test map.
    where
        The backbone's predictions file, named in the error if the maps differ.

    Returns
    -------
    dict
        {output: {"ratio", "ci_low", "ci_high"}} plus ``n_maps``, ``n_cosmologies``, ``n_boot``.
    """
    if not np.array_equal(sop["sample"], backbone["sample"]):
        raise InputError(where, "holds the predictions of other test maps than SOP's")
    sop_error = (np.asarray(sop["predictions"]) - sop["targets"]) ** 2
    backbone_error = (backbone["predictions"] - backbone["targets"]) ** 2
    interval = bootstrap_ratio_of_means(sop_error, backbone_error, cosmologies, n_boot, seed)
    result: dict[str, Any] = {
        str(name): {
            "ratio": float(interval.estimate[i]),
            "ci_low": float(interval.low[i]),
            "ci_high": float(interval.high[i]),
        }
        for i, name in enumerate(sop["names"])
    }
    n_maps = int(np.min(interval.n_maps))
    return {**result, "n_maps": n_maps, "n_cosmologies": interval.n_cosmologies, "n_boot": n_boot}


def choose_on_validation(validation: Mapping[str, float]) -> str:
    """The variant with the lowest validation score (the first listed among equals).

    Test scores are no argument: a variant chosen on the test split would be reported on the
    maps it was chosen on, with a test error biased low.

    Parameters
    ----------
    validation
        Variant name -> validation score, lower is better (e.g. MSE summed over outputs).

    Raises
    ------
    ValueError
        If there is no variant or a score is not a finite number.
    """
    if not validation:
        raise ValueError("no variants to choose from")
    bad = {name: score for name, score in validation.items() if not math.isfinite(score)}
    if bad:
        raise ValueError(f"validation scores must be finite numbers, got {bad}")
    return min(validation, key=validation.__getitem__)


def choice_line(validation: Mapping[str, float], criterion: str) -> str:
    """The sentence a benchmark prints under its table: the choice, its validation score and
    the runner-up's (whether the margin is larger than the split's noise is the reader's call),
    and that the test columns took no part."""
    chosen = choose_on_validation(validation)
    line = f"chosen on validation only: {chosen} ({criterion} {validation[chosen]:.3f}"
    others = {name: score for name, score in validation.items() if name != chosen}
    if others:
        runner_up = choose_on_validation(others)
        line += f"; next: {runner_up} {others[runner_up]:.3f}"
    return line + "); the test columns took no part in the choice"
