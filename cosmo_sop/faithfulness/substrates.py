"""Substrates: what "no information" means for the pixels that a faithfulness metric changes.

The zero map (the mean of a convergence map, and what SOP puts outside a group) is the default;
a map's own mean per bin, a blurred copy that keeps the large scales, or any maps of x's shape
are the alternatives. :func:`substrate_prediction` is a model's output on them, the point that
attributions relative to the substrate start from.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from scipy import ndimage
from torch import Tensor

from cosmo_sop.faithfulness.inputs import Predict, check_choice, check_predict, checked_inputs

SubstrateKind = Literal["zero", "mean", "blur"]


def make_substrate(
    x: Tensor | np.ndarray, kind: SubstrateKind | Tensor = "zero", blur_sigma: float = 3.0
) -> Tensor:
    """The "no information" maps that perturbed pixels take, shape (N, C, H, W).

    Parameters
    ----------
    x
        Inputs (N, C, H, W).
    kind
        "zero": 0 everywhere (the mean of a convergence map, and what SOP puts outside a group);
        "mean": every map's own mean per bin; "blur": x smoothed by a Gaussian of
        ``blur_sigma`` pixels per bin (reflecting edges), which keeps the large scales.
        A tensor of x's shape is used as given.
    blur_sigma
        Gaussian standard deviation for "blur", in pixels.
    """
    x = checked_inputs(x)
    if isinstance(kind, (Tensor, np.ndarray)):
        substrate = torch.as_tensor(kind, device=x.device, dtype=x.dtype)
        if substrate.shape != x.shape:
            raise ValueError(
                f"substrate has shape {tuple(substrate.shape)}, x {tuple(x.shape)}; they must match"
            )
        return substrate
    check_choice("substrate", kind, ("zero", "mean", "blur"))
    if kind == "zero":
        return torch.zeros_like(x)
    if kind == "mean":
        return x.mean(dim=(2, 3), keepdim=True).expand_as(x)
    if not blur_sigma > 0:
        raise ValueError(f"blur_sigma must be > 0 pixels, got {blur_sigma!r}")
    blurred = ndimage.gaussian_filter(
        x.detach().cpu().numpy(), sigma=(0, 0, blur_sigma, blur_sigma), mode="reflect"
    )
    return torch.from_numpy(blurred).to(device=x.device, dtype=x.dtype)


def substrate_name(substrate: SubstrateKind | Tensor) -> str:
    """Name of a substrate in the results: its kind, or "custom" for given maps."""
    return "custom" if isinstance(substrate, (Tensor, np.ndarray)) else str(substrate)


def substrate_prediction(
    predict: Predict,
    x: Tensor | np.ndarray,
    kind: SubstrateKind | Tensor = "zero",
    blur_sigma: float = 3.0,
    max_batch: int = 256,
) -> np.ndarray:
    """The model's output on the substrate of every map, h(s), float64 (N, n_outputs).

    What an attribution relative to the substrate is measured from: Integrated Gradients from
    the zero map sums to f(x) - h(0), and SOP's contribution of a group is c_i (y_i - h(s))
    (:func:`~cosmo_sop.faithfulness.ranks.group_contributions`).

    Parameters
    ----------
    predict
        Model in eval mode, (R, C, H, W) -> (R, n_outputs), e.g. the backbone (standardised
        outputs).
    x
        Inputs (N, C, H, W).
    kind, blur_sigma
        The substrate, as in :func:`make_substrate`.
    max_batch
        Most maps per model call.
    """
    check_predict(predict)
    substrate = make_substrate(x, kind, blur_sigma)
    with torch.inference_mode():
        outputs = [torch.as_tensor(predict(chunk)) for chunk in substrate.split(max_batch)]
    return torch.cat(outputs).detach().to("cpu", torch.float64).numpy()
