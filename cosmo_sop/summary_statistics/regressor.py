"""The regressor from summary statistics to (Om, s8): a small MLP, or ridge regression.

:func:`fit_summary_regressor` standardises the features with train-split statistics and
predicts the standardised (Om, s8) of :class:`cosmo_sop.models.targets.LabelScaler`: either a
small MLP trained by full-batch AdamW with early stopping on the validation split, or ridge
regression (closed form, its penalty chosen on the validation split) for comparison. Both are
a few lines of torch or numpy, so that scikit-learn is not a dependency.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from cosmo_sop.summary_statistics.options import resolve_summary_config

#: The regressors :func:`fit_summary_regressor` fits (config key ``summary_statistics.regressors``).
REGRESSORS = ("mlp", "ridge")


@dataclass
class SummaryRegressor:
    """A fitted map from summary statistics to standardised targets.

    Attributes
    ----------
    kind
        ``"mlp"`` or ``"ridge"``.
    feature_mean, feature_scale
        Train-split standardisation of the features, ``(F,)`` (scale 1 for constant columns).
    coefficients
        Ridge: ``(F + 1, n_outputs)``, intercept last. None for the MLP.
    network
        MLP: the trained torch module (eval mode, CPU, float64). None for ridge.
    info
        How it was fitted: chosen penalty or steps, best validation MSE, ...
    """

    kind: str
    feature_mean: np.ndarray
    feature_scale: np.ndarray
    coefficients: np.ndarray | None = None
    network: torch.nn.Module | None = None
    info: dict[str, Any] = field(default_factory=dict)

    def standardise(self, features: np.ndarray) -> np.ndarray:
        return (np.asarray(features, dtype=np.float64) - self.feature_mean) / self.feature_scale

    def predict(self, features: np.ndarray) -> np.ndarray:
        """Standardised targets predicted from ``features`` ``(N, F)``, shape ``(N, n_outputs)``."""
        x = self.standardise(features)
        if self.kind == "ridge":
            return x @ self.coefficients[:-1] + self.coefficients[-1]
        with torch.no_grad():
            return self.network(torch.from_numpy(x)).numpy()


def predict(regressor: SummaryRegressor, features: np.ndarray) -> np.ndarray:
    """Standardised targets predicted by ``regressor`` (see :meth:`SummaryRegressor.predict`)."""
    return regressor.predict(features)


def _mlp(n_in: int, hidden: Sequence[int], n_out: int) -> torch.nn.Sequential:
    layers: list[torch.nn.Module] = []
    for width in hidden:
        layers += [torch.nn.Linear(n_in, width), torch.nn.SiLU()]
        n_in = width
    layers.append(torch.nn.Linear(n_in, n_out))
    return torch.nn.Sequential(*layers).double()


def _fit_ridge(
    x_train, y_train, x_val, y_val, alphas: Sequence[float]
) -> tuple[np.ndarray, dict[str, Any]]:
    """Ridge on standardised features; the penalty with the lowest validation MSE wins.

    One eigendecomposition of the (F x F) Gram matrix of the centred design serves every
    penalty: ``w = V diag(1 / (lambda + a n)) V^T X^T y`` (an SVD of the N x F design gives the
    same but takes ten times longer). Penalties are per sample (``a n``), so they mean the same
    whatever the train-split size; the standardised features keep the Gram matrix well
    conditioned enough for the smallest penalties in float64.
    """
    n = x_train.shape[0]
    x_mean, y_mean = x_train.mean(axis=0), y_train.mean(axis=0)
    centred = x_train - x_mean
    eigenvalues, eigenvectors = np.linalg.eigh(centred.T @ centred)
    projected = eigenvectors.T @ (centred.T @ (y_train - y_mean))
    best: tuple[float, float, np.ndarray] | None = None
    val_mse = {}
    for alpha in alphas:
        weights = eigenvectors @ (projected / (np.maximum(eigenvalues, 0.0) + alpha * n)[:, None])
        intercept = y_mean - x_mean @ weights
        mse = float(np.mean((x_val @ weights + intercept - y_val) ** 2))
        val_mse[alpha] = mse
        if best is None or mse < best[1]:
            best = (alpha, mse, np.vstack([weights, intercept]))
    alpha, mse, coefficients = best
    info = {
        "alpha": alpha,
        "val_mse": mse,
        "val_mse_per_alpha": {str(a): m for a, m in val_mse.items()},
    }
    return coefficients, info


def _fit_mlp(
    x_train, y_train, x_val, y_val, seed: int, cfg: Mapping[str, Any]
) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Full-batch AdamW on the MSE, keeping the weights of the lowest validation loss.

    Full batches make the fit deterministic given the seed (which only sets the initial
    weights); float64 keeps it reproducible to the last bit on one machine.
    """
    with torch.random.fork_rng(devices=[]):  # seed the initialisation without touching global state
        torch.manual_seed(seed)
        network = _mlp(x_train.shape[1], cfg["hidden"], y_train.shape[1])
    xt, yt = torch.from_numpy(x_train), torch.from_numpy(y_train)
    xv, yv = torch.from_numpy(x_val), torch.from_numpy(y_val)
    parameters = list(network.parameters())
    optimiser = torch.optim.AdamW(
        parameters, lr=cfg["learning_rate"], weight_decay=cfg["weight_decay"]
    )
    best_loss, best_step, best = math.inf, 0, [p.detach().clone() for p in parameters]
    steps = tqdm(
        range(1, cfg["max_steps"] + 1),
        desc="fit MLP",
        unit="step",
        leave=False,
        disable=not cfg["progress"],
    )
    # One thread: these matrices are small, and extra threads only contend with other work
    # (ten times slower on a busy 2-core machine).
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for step in steps:
            optimiser.zero_grad()
            loss = torch.mean((network(xt) - yt) ** 2)
            loss.backward()
            optimiser.step()
            with torch.no_grad():
                val_loss = float(torch.mean((network(xv) - yv) ** 2))
                if val_loss < best_loss:
                    best_loss, best_step = val_loss, step
                    for saved, p in zip(best, parameters, strict=True):
                        saved.copy_(p)
            if step - best_step >= cfg["patience"]:
                break
    finally:
        torch.set_num_threads(previous_threads)
    with torch.no_grad():
        for saved, p in zip(best, parameters, strict=True):
            p.copy_(saved)
    network.eval()
    return network, {"best_step": best_step, "steps": step, "val_mse": best_loss}


def fit_summary_regressor(
    features_train: np.ndarray,
    y_train: np.ndarray,
    features_val: np.ndarray,
    y_val: np.ndarray,
    seed: int | None = None,
    *,
    kind: str | None = None,
    config: Mapping[str, Any] | None = None,
) -> SummaryRegressor:
    """Fit a regressor from summary statistics to (standardised) targets.

    Parameters
    ----------
    features_train, features_val
        ``(N, F)`` feature vectors of the train and validation splits.
    y_train, y_val
        ``(N, n_outputs)`` targets (standardised, e.g. by
        :class:`cosmo_sop.models.targets.LabelScaler`).
    seed
        Seed of the MLP's initial weights (ridge is deterministic); None: the options' ``seed``.
    kind
        ``"mlp"``: MLP with early stopping on the validation MSE; ``"ridge"``: closed-form ridge
        regression, the penalty chosen on the validation MSE. None: the first of the options'
        ``regressors``.
    config
        Options (the ``summary_statistics`` config section: ``hidden``, ``learning_rate``,
        ``weight_decay``, ``max_steps``, ``patience``, ``ridge_alphas``, ``progress``, ...).
    """
    cfg = resolve_summary_config(config)
    kind = cfg["regressors"][0] if kind is None else kind
    seed = cfg["seed"] if seed is None else seed
    if kind not in REGRESSORS:
        raise ValueError(f"kind must be one of {REGRESSORS}, got {kind!r}")
    x_train, y_train, x_val, y_val = _checked(features_train, y_train, features_val, y_val)
    mean = x_train.mean(axis=0)
    scale = x_train.std(axis=0)
    scale[scale == 0] = 1.0  # constant columns (e.g. empty height bins) stay constant zeros
    regressor = SummaryRegressor(kind, mean, scale)
    xs_train, xs_val = regressor.standardise(x_train), regressor.standardise(x_val)
    if kind == "ridge":
        regressor.coefficients, regressor.info = _fit_ridge(
            xs_train, y_train, xs_val, y_val, cfg["ridge_alphas"]
        )
    else:
        regressor.network, regressor.info = _fit_mlp(
            xs_train, y_train, xs_val, y_val, int(seed), cfg
        )
    return regressor


def _checked(*arrays: np.ndarray) -> list[np.ndarray]:
    """Train features and targets, validation features and targets as float64, checked."""
    arrays = [np.asarray(a, dtype=np.float64) for a in arrays]
    x_train, y_train, x_val, y_val = arrays
    shapes_fit = (
        all(a.ndim == 2 for a in arrays)
        and x_train.shape[0] == y_train.shape[0] >= 2
        and x_val.shape[0] == y_val.shape[0] >= 1
        and x_train.shape[1] == x_val.shape[1]
        and y_train.shape[1] == y_val.shape[1]
    )
    if not shapes_fit:
        raise ValueError(
            "need features (N, F) and targets (N, n) for train and val, "
            f"got {[a.shape for a in arrays]}"
        )
    if not all(np.all(np.isfinite(a)) for a in arrays):
        raise ValueError("features and targets must be finite")
    return arrays
