"""X-Gradient: input x gradient, which is exact Integrated Gradients for bias-free networks.

For a network f that is positively homogeneous of degree one, f(a x) = a f(x) for a > 0 (an
X-DNN: bias-free linear layers, (Leaky)ReLU, max-pooling; Hesse, Schaub-Meyer & Roth, NeurIPS
2021), the gradient is constant along the ray {a x : a > 0}, so Integrated Gradients from the
all-zero baseline collapses to one backward pass:

    IG_i(x) = x_i * int_0^1 d_i f(a x) da = x_i * d_i f(x),

and completeness holds exactly: sum_i x_i d_i f(x) = f(x) - f(0) = f(x) (Euler's theorem).
For a network with biases or BatchNorm none of this holds, so :class:`XGradient` inspects the
model first and refuses (or warns about) one that is not built to be homogeneous.

The arithmetic is captum's :class:`~captum.attr.InputXGradient`; this module adds the check.
"""

from __future__ import annotations

import warnings
from typing import Literal

from captum.attr import InputXGradient
from torch import Tensor, nn

from cosmo_sop.models.backbone import InputScale

Check = Literal["raise", "warn", "off"]
#: An output column for all samples, or one per sample.
Target = int | list[int] | Tensor | None

#: Leaf modules that are positively homogeneous of degree one (given no bias): linear maps,
#: (Leaky/P)ReLU, max- and average-pooling, reshapes, fixed input scaling, and dropout in eval mode.
HOMOGENEOUS_LEAVES: tuple[type[nn.Module], ...] = (
    nn.Conv1d,
    nn.Conv2d,
    nn.Conv3d,
    nn.ConvTranspose1d,
    nn.ConvTranspose2d,
    nn.ConvTranspose3d,
    nn.Linear,
    nn.ReLU,
    nn.LeakyReLU,
    nn.PReLU,
    nn.MaxPool1d,
    nn.MaxPool2d,
    nn.MaxPool3d,
    nn.AdaptiveMaxPool1d,
    nn.AdaptiveMaxPool2d,
    nn.AdaptiveMaxPool3d,
    nn.AvgPool1d,
    nn.AvgPool2d,
    nn.AvgPool3d,
    nn.AdaptiveAvgPool1d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveAvgPool3d,
    nn.Flatten,
    nn.Unflatten,
    nn.Identity,
    nn.Dropout,
    nn.Dropout1d,
    nn.Dropout2d,
    nn.Dropout3d,
    InputScale,  # division by a fixed positive constant
)

_NORMS = (
    nn.modules.batchnorm._NormBase,  # BatchNorm*, InstanceNorm*
    nn.GroupNorm,
    nn.LayerNorm,
    nn.LocalResponseNorm,
)
_DROPOUTS = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d)


def homogeneity_violations(model: nn.Module) -> list[str]:
    """Why ``model`` may not be positively homogeneous of degree one, found by inspection.

    Looks at every leaf module: a bias, a normalisation layer, a module type outside
    :data:`HOMOGENEOUS_LEAVES`, or dropout left in training mode is reported. The check is
    structural, so it cannot see operations written in a ``forward`` method (adding a
    constant, a ``torch.tanh``); an empty list is necessary, not sufficient.

    Returns
    -------
    list of str
        One line per offending module, ``"<module name>: <reason>"``; empty if none.
    """
    problems = []
    for name, module in model.named_modules():
        label = name or type(model).__name__
        if isinstance(module, _NORMS):
            problems.append(f"{label}: {type(module).__name__} shifts its input by a mean")
        elif isinstance(getattr(module, "bias", None), Tensor):
            problems.append(f"{label}: has a bias")
        elif next(module.children(), None) is None and not isinstance(module, HOMOGENEOUS_LEAVES):
            problems.append(f"{label}: {type(module).__name__} is not known to be homogeneous")
        if isinstance(module, _DROPOUTS) and module.training and module.p > 0:
            problems.append(f"{label}: dropout is active (call model.eval())")
    return problems


class XGradient(InputXGradient):
    """Input x gradient of a bias-free network, equal to Integrated Gradients from zero.

    Parameters
    ----------
    model
        The network, e.g. ``ConvRegressor.xdnn(...)`` in eval mode.
    check
        What to do when :func:`homogeneity_violations` finds a problem, at construction and
        at every :meth:`attribute` call: ``"raise"`` a ValueError, ``"warn"`` (a UserWarning;
        the result is then plain input x gradient, not IG), or ``"off"``.

    Examples
    --------
    >>> model = ConvRegressor.xdnn(4).eval()  # doctest: +SKIP
    >>> attributions = XGradient(model).attribute(kappa, target=0)  # doctest: +SKIP
    """

    def __init__(self, model: nn.Module, check: Check = "raise") -> None:
        if check not in ("raise", "warn", "off"):
            raise ValueError(f"check must be 'raise', 'warn' or 'off', got {check!r}")
        if not isinstance(model, nn.Module):
            raise TypeError(f"XGradient needs a torch.nn.Module, got {type(model).__name__}")
        super().__init__(model)
        self.model = model
        self.check = check
        self._check_model()

    def attribute(  # type: ignore[override]
        self,
        inputs: Tensor,
        target: Target = None,
        additional_forward_args: object | None = None,
    ) -> Tensor:
        """Input x gradient of the ``target`` output column, same shape as ``inputs``.

        Parameters
        ----------
        inputs
            Batch of inputs, shape (B, ...). Gradients are taken for the whole batch in one
            backward pass (outputs of different samples must not depend on each other).
        target
            Output column to explain (e.g. 0 for Omega_m, 1 for sigma_8), or a per-sample
            list/tensor of columns; None only for a model with one output per sample.
        additional_forward_args
            Passed on to the model after ``inputs``; not attributed.
        """
        self._check_model()
        if isinstance(inputs, Tensor):
            # A leaf copy that requires grad: the caller's tensor is left untouched (and captum
            # does not warn about switching requires_grad on).
            inputs = inputs.detach().requires_grad_(True)
        attributions = super().attribute(inputs, target, additional_forward_args)
        if isinstance(attributions, tuple):  # captum's multi-input form
            return tuple(a.detach() for a in attributions)
        return attributions.detach()

    def _check_model(self) -> None:
        if self.check == "off":
            return
        problems = homogeneity_violations(self.model)
        if not problems:
            return
        message = (
            f"{type(self.model).__name__} is not positively homogeneous, so input x gradient "
            f"is not Integrated Gradients: {'; '.join(problems)}"
        )
        if self.check == "raise":
            raise ValueError(message)
        warnings.warn(message, UserWarning, stacklevel=3)


def x_gradient(
    model: nn.Module, inputs: Tensor, target: int | None, check: Check = "raise"
) -> Tensor:
    """Input x gradient of output column ``target`` of ``model`` at ``inputs``.

    Equals Integrated Gradients from the zero baseline when ``model`` is bias-free and
    homogeneous (see :class:`XGradient`, which does the work, and its ``check`` argument).

    Parameters
    ----------
    model
        The network; put it in eval mode first.
    inputs
        Shape (B, ...), e.g. kappa patches (B, C, H, W).
    target
        Output column to explain; None for a model with a single output per sample.
    check
        "raise", "warn" or "off": what to do if the model is not built to be homogeneous.

    Returns
    -------
    Tensor
        Attributions, same shape and dtype as ``inputs``, detached from the graph. Summed
        over all but the batch axis they give ``model(inputs)[:, target]`` for an X-DNN.
    """
    return XGradient(model, check=check).attribute(inputs, target=target)
