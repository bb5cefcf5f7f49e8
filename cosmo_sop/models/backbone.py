"""Convolutional regressor of (Omega_m, sigma_8) from flat kappa patches.

The architecture is the CosmoGrid backbone of the Sum-of-Parts paper (You et al., ICML 2025,
arXiv 2310.16316): one input channel per tomographic bin, three convolutional blocks
(conv k=4 -> LeakyReLU -> max-pool 2) of widths 16, 32, 48, then a multilayer perceptron
1200 -> 128 -> 64 -> 32 -> 2. For a 66 x 66 patch the side shrinks as
66 -conv-> 63 -pool-> 31 -conv-> 28 -pool-> 14 -conv-> 11 -pool-> 5, so 48 * 5 * 5 = 1200 features
enter the perceptron; other patch sizes get their own flattened size.

With ``bias=False`` and no BatchNorm the same network is an X-DNN (Hesse, Schaub-Meyer & Roth,
NeurIPS 2021): only bias-free linear maps, (Leaky)ReLU and max-pooling, so it is positively
homogeneous of degree one, f(a x) = a f(x) for every a > 0. Its input x gradient then equals
Integrated Gradients from the all-zero baseline, exactly and at the cost of one backward pass
(:mod:`cosmo_sop.attribution.xgradient`). Homogeneity also fixes f(0) = 0, so train an X-DNN on
centred (standardised) targets: a blank map then predicts the training mean.
"""

from __future__ import annotations

import copy
import inspect
import math
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from cosmo_sop.config import defaults, fill_defaults
from cosmo_sop.conv_sizes import block_output_sizes
from cosmo_sop.errors import InputError


class ConvBlock(nn.Sequential):
    """conv (no padding, stride 1) -> LeakyReLU -> 2 x 2 max-pool [-> BatchNorm].

    Each stage is a named child (``conv``, ``act``, ``pool``, ``norm``) so that hooks and
    state-dict keys read as what they are.

    Without gradients the block pools before it activates: the same values bit for bit, as a
    non-decreasing activation commutes with a maximum also in floating point, from a quarter
    of the activations: 1.07-1.10x the maps per second of the demo's trained CNN on its maps,
    whole or masked, on 2 CPU cores (1.2-1.3x for the untrained one of
    ``benchmarks/backbone_layout.py``). Where gradients flow the usual order stays: two inputs
    of a pooling window that the activation rounds to one value send the gradient to the first
    of them, pooling first to the larger one, and that rare difference changed the demo's
    trained weights.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        negative_slope: float,
        bias: bool,
        batchnorm: bool,
    ) -> None:
        layers: OrderedDict[str, nn.Module] = OrderedDict(
            conv=nn.Conv2d(in_channels, out_channels, kernel_size, bias=bias),
            act=nn.LeakyReLU(negative_slope),
            pool=nn.MaxPool2d(2),
        )
        if batchnorm:
            layers["norm"] = nn.BatchNorm2d(out_channels)
        super().__init__(layers)

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv(x)
        x = self.pool(self.act(x)) if x.requires_grad else self.act(self.pool(x))
        return self.norm(x) if hasattr(self, "norm") else x


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


def _positive_ints(name: str, values: Sequence[int]) -> tuple[int, ...]:
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
        raise ValueError(f"{name} must be a sequence of positive integers, got {values!r}")
    return tuple(_positive_int(f"{name}[{i}]", v) for i, v in enumerate(values))


class ConvRegressor(nn.Module):
    """CNN regressing cosmological parameters from kappa patches of shape (B, C, H, W).

    Parameters
    ----------
    in_channels
        Number of input channels C (tomographic bins).
    n_outputs
        Number of regressed parameters (2: Omega_m, sigma_8).
    input_size
        Side H = W of the square input patches, in pixels.
    widths
        Output channels of the successive conv blocks.
    kernel_size
        Side of every convolution kernel, in pixels.
    hidden
        Widths of the hidden fully connected layers; the last one is the embedding size.
        May be empty, in which case the embedding is the flattened trunk output.
    negative_slope
        Slope of LeakyReLU for negative inputs (0 gives ReLU).
    bias
        Give every conv and linear layer a bias. ``False`` (with ``batchnorm=False``) makes the
        network an X-DNN; see :meth:`xdnn`.
    batchnorm
        Append BatchNorm2d to every conv block.
    dropout
        Dropout probability after every hidden activation (identity in eval mode).

    Arguments left None take the config schema's defaults (``backbone`` section, and
    ``ingest.patch_size`` for ``input_size``): the SOP paper's architecture.

    Attributes
    ----------
    blocks : nn.ModuleList
        The conv blocks, each a :class:`ConvBlock`.
    mlp : nn.Sequential
        Flatten, then Linear -> LeakyReLU [-> Dropout] per hidden width.
    head : nn.Linear
        Output layer, ``embed_dim -> n_outputs``.
    embed_dim : int
        Size of the penultimate features returned by :meth:`embed`.
    feature_sides : list of int
        Side of the feature map after each conv block, in pixels.
    has_bias, has_batchnorm : bool
        The ``bias`` and ``batchnorm`` options (``module.bias`` is reserved for tensors).
    """

    def __init__(
        self,
        in_channels: int,
        n_outputs: int = 2,
        input_size: int | None = None,
        widths: Sequence[int] | None = None,
        kernel_size: int | None = None,
        hidden: Sequence[int] | None = None,
        negative_slope: float | None = None,
        bias: bool = True,
        batchnorm: bool | None = None,
        dropout: float | None = None,
    ) -> None:
        super().__init__()
        if input_size is None:
            input_size = defaults("ingest")["patch_size"]
        arch = fill_defaults(
            "backbone",
            widths=widths,
            kernel_size=kernel_size,
            hidden=hidden,
            negative_slope=negative_slope,
            batchnorm=batchnorm,
            dropout=dropout,
        )
        negative_slope, dropout = arch["negative_slope"], arch["dropout"]
        self.in_channels = _positive_int("in_channels", in_channels)
        self.n_outputs = _positive_int("n_outputs", n_outputs)
        self.input_size = _positive_int("input_size", input_size)
        self.widths = _positive_ints("widths", arch["widths"])
        self.kernel_size = _positive_int("kernel_size", arch["kernel_size"])
        self.hidden = _positive_ints("hidden", arch["hidden"])
        if not self.widths:
            raise ValueError("widths must name at least one conv block")
        if not (math.isfinite(negative_slope) and negative_slope >= 0):
            raise ValueError(f"negative_slope must be finite and >= 0, got {negative_slope!r}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must lie in [0, 1), got {dropout!r}")
        self.negative_slope = float(negative_slope)
        # Not ``self.bias``: by torch convention ``module.bias`` is a tensor or None.
        self.has_bias = bool(bias)
        self.has_batchnorm = bool(arch["batchnorm"])
        self.dropout = float(dropout)

        # Fixed per-bin input scale (set from the training data, saved with the weights), so the
        # network sees kappa of order one while inputs and attributions stay in physical units.
        self.scale = InputScale(self.in_channels)

        # Convolutional trunk: C x S x S -> widths[-1] x s x s.
        self.feature_sides = block_output_sizes(self.input_size, len(self.widths), self.kernel_size)
        channels = (self.in_channels, *self.widths)
        self.blocks = nn.ModuleList(
            ConvBlock(
                c_in,
                c_out,
                self.kernel_size,
                self.negative_slope,
                self.has_bias,
                self.has_batchnorm,
            )
            for c_in, c_out in zip(channels[:-1], channels[1:])
        )

        # Perceptron: flattened trunk output -> hidden[-1] (the embedding).
        n_flat = self.widths[-1] * self.feature_sides[-1] ** 2
        mlp: list[nn.Module] = [nn.Flatten()]
        for n_in, n_out in zip((n_flat, *self.hidden[:-1]), self.hidden):
            mlp += [nn.Linear(n_in, n_out, bias=self.has_bias), nn.LeakyReLU(self.negative_slope)]
            if self.dropout > 0:
                mlp.append(nn.Dropout(self.dropout))
        self.mlp = nn.Sequential(*mlp)
        self.embed_dim = self.hidden[-1] if self.hidden else n_flat

        # Linear read-out of the parameters.
        self.head = nn.Linear(self.embed_dim, self.n_outputs, bias=self.has_bias)

    # -- construction -------------------------------------------------------------------------

    @classmethod
    def xdnn(cls, in_channels: int, **kwargs: Any) -> ConvRegressor:
        """Bias-free, BatchNorm-free twin: positively homogeneous of degree one.

        Takes the same keyword arguments as the constructor; ``bias`` and ``batchnorm`` may
        only be given as ``False``.

        Raises
        ------
        ValueError
            If ``bias=True`` or ``batchnorm=True`` is requested, which would break
            homogeneity (and with it X-Gradient = Integrated Gradients).
        """
        for option in ("bias", "batchnorm"):
            if kwargs.pop(option, False):
                raise ValueError(
                    f"an X-DNN cannot have {option}=True: it would make the network "
                    "non-homogeneous, so input x gradient would no longer equal Integrated "
                    "Gradients"
                )
        return cls(in_channels, bias=False, batchnorm=False, **kwargs)

    @property
    def config(self) -> dict[str, Any]:
        """Constructor arguments (JSON-serialisable) that rebuild this architecture."""
        return {
            "in_channels": self.in_channels,
            "n_outputs": self.n_outputs,
            "input_size": self.input_size,
            "widths": list(self.widths),
            "kernel_size": self.kernel_size,
            "hidden": list(self.hidden),
            "negative_slope": self.negative_slope,
            "bias": self.has_bias,
            "batchnorm": self.has_batchnorm,
            "dropout": self.dropout,
        }

    @classmethod
    def from_config(cls, config: Mapping[str, Any], where: str = "model config") -> ConvRegressor:
        """Rebuild an (untrained) network from :attr:`config`.

        Parameters
        ----------
        config
            Constructor arguments, e.g. read back from a checkpoint's metadata.
        where
            Name of the source of ``config`` (a file, a config key) for error messages.

        Raises
        ------
        InputError
            On unknown or missing keys, or values the constructor rejects.
        """
        accepted = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
        unknown = sorted(set(config) - set(accepted))
        if unknown:
            raise InputError(
                where, f"unknown ConvRegressor option(s) {unknown}; accepted: {accepted}"
            )
        if "in_channels" not in config:
            raise InputError(where, "ConvRegressor config lacks 'in_channels'")
        try:
            return cls(**config)
        except (TypeError, ValueError) as error:
            raise InputError(where, f"invalid ConvRegressor config: {error}") from error

    # -- structure ----------------------------------------------------------------------------

    @property
    def trunk(self) -> nn.Sequential:
        """All conv blocks as one ``nn.Sequential`` (shares, does not copy, their parameters)."""
        return nn.Sequential(*self.blocks)

    @property
    def bias_free(self) -> bool:
        """True when no layer has a bias and there is no BatchNorm: the X-DNN condition."""
        return not any(
            isinstance(getattr(m, "bias", None), Tensor)
            or isinstance(m, nn.modules.batchnorm._BatchNorm)
            for m in self.modules()
        )

    @property
    def n_parameters(self) -> int:
        """Number of trainable scalars."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    def feature_shape(self, n_blocks: int | None = None) -> tuple[int, int, int]:
        """(channels, height, width) of :meth:`features` after ``n_blocks`` blocks (None: all)."""
        n_blocks = self._check_n_blocks(n_blocks)
        if n_blocks == 0:
            return (self.in_channels, self.input_size, self.input_size)
        side = self.feature_sides[n_blocks - 1]
        return (self.widths[n_blocks - 1], side, side)

    def token_encoder(self, n_blocks: int) -> nn.Module:
        """A trainable copy of the input scale and the first ``n_blocks`` conv blocks.

        SOP's token encoder (:meth:`~cosmo_sop.models.sop.SumOfParts.from_backbone`): maps x
        (B, C, H, W) to the feature map (B, *feature_shape(n_blocks)).
        """
        if not 1 <= n_blocks <= len(self.blocks):
            raise ValueError(
                f"encoder_blocks must lie in [1, {len(self.blocks)}], got {n_blocks!r}"
            )
        encoder = copy.deepcopy(nn.Sequential(self.scale, *self.blocks[:n_blocks]))
        return encoder.requires_grad_(True)

    # -- computation --------------------------------------------------------------------------

    def features(self, x: Tensor, n_blocks: int | None = None) -> Tensor:
        """Feature map after the first ``n_blocks`` conv blocks (all of them if None).

        Parameters
        ----------
        x
            Patches, shape (B, C, H, W) with C = ``in_channels`` and H = W = ``input_size``.
        n_blocks
            How many blocks to apply, 0 to ``len(blocks)``; 0 returns the rescaled input.

        Returns
        -------
        Tensor
            Shape (B, *feature_shape(n_blocks)).
        """
        n_blocks = self._check_n_blocks(n_blocks)
        self._check_input(x)
        # Channels-last (NHWC) convolutions whatever the caller's layout: for these narrow
        # convs on CPU about 2x the maps per second of NCHW in inference and 1.4x in training
        # (benchmarks/backbone_layout.py); the values agree to float rounding.
        x = self.scale(x.contiguous(memory_format=torch.channels_last))
        for block in self.blocks[:n_blocks]:
            x = block(x)
        return x

    def embed(self, x: Tensor) -> Tensor:
        """Penultimate features (after the last hidden activation), shape (B, ``embed_dim``)."""
        return self.mlp(self.features(x))

    def forward(self, x: Tensor) -> Tensor:
        """Predicted parameters, shape (B, ``n_outputs``)."""
        return self.head(self.embed(x))

    # -- validation ---------------------------------------------------------------------------

    def _check_n_blocks(self, n_blocks: int | None) -> int:
        if n_blocks is None:
            return len(self.blocks)
        n_max = len(self.blocks)
        is_int = isinstance(n_blocks, int) and not isinstance(n_blocks, bool)
        if not (is_int and 0 <= n_blocks <= n_max):
            raise ValueError(f"n_blocks must be an integer in [0, {n_max}], got {n_blocks!r}")
        return n_blocks

    def _check_input(self, x: Tensor) -> None:
        expected = (self.in_channels, self.input_size, self.input_size)
        if not isinstance(x, Tensor) or x.ndim != 4 or tuple(x.shape[1:]) != expected:
            got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(
                "ConvRegressor expects input of shape (batch, C, H, W) with "
                f"(C, H, W) = {expected}; got {got}"
            )
        dtype = self.head.weight.dtype
        if x.dtype != dtype:
            raise ValueError(f"ConvRegressor input has dtype {x.dtype}, the network {dtype}")


class InputScale(nn.Module):
    """Divide every channel by a fixed scale: x / scale[c].

    A buffer, not a parameter: it is set once from the training split (the standard deviation
    of kappa per bin, about 1e-3 to 1e-2) and saved with the weights. Division by a constant
    keeps the network positively homogeneous (X-DNN) and maps zero (masked pixels) to zero.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.register_buffer("scale", torch.ones(channels))

    def set_(self, scale: Sequence[float] | Tensor) -> InputScale:
        """Set the per-channel scale in place (positive, finite); returns self."""
        scale = torch.as_tensor(scale, dtype=self.scale.dtype).reshape(self.scale.shape)
        if not (torch.isfinite(scale).all() and (scale > 0).all()):
            raise ValueError(f"input scale must be positive and finite, got {scale.tolist()}")
        self.scale.copy_(scale)
        return self

    def forward(self, x: Tensor) -> Tensor:
        return x / self.scale.to(x.dtype)[:, None, None]


def xdnn(in_channels: int, **kwargs: Any) -> ConvRegressor:
    """Bias-free X-DNN :class:`ConvRegressor`; same as :meth:`ConvRegressor.xdnn`."""
    return ConvRegressor.xdnn(in_channels, **kwargs)
