"""A model that replays its outputs when the same batches come again.

KernelSHAP and LIME (:mod:`~cosmo_sop.attribution.perturbation`) draw their perturbed maps from
a seed that is the same for every output, and the backbone predicts all outputs at once: the
second output's call feeds the backbone exactly the batches of the first. Wrapped in
:class:`ReplayedOutputs`, the first call records each batch with its outputs and, after
:meth:`~ReplayedOutputs.rewind`, the next call takes them back instead of running the
backbone, which halves the backbone passes of both methods for (Omega_m, sigma_8). A batch is
replayed only if it equals the recorded one at its position element for element, so a
differing batch runs the model, and so does every call that needs gradients: the result is
the same as without the wrapper, bit for bit. Written here because captum calls its
``forward_func`` one output (``target``) at a time and has no such cache.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class ReplayedOutputs(nn.Module):
    """``model`` with a record of the batches it saw and its outputs on them.

    Parameters
    ----------
    model
        Any module; its ``n_outputs`` attribute, if any, is passed on.

    Examples
    --------
    >>> replayed = ReplayedOutputs(backbone)
    >>> for target in (0, 1):
    ...     replayed.rewind()  # the second pass replays the first's outputs
    ...     attribute("kernel_shap", replayed, maps, target, segments)
    >>> replayed.clear()  # before other maps, to free the record
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        n_outputs = getattr(model, "n_outputs", None)
        if n_outputs is not None:
            self.n_outputs = n_outputs
        self._record: list[tuple[Tensor, Tensor]] = []
        self._position = 0
        self.n_replayed = 0

    def rewind(self) -> None:
        """Replay the record from its first batch on."""
        self._position = 0

    def clear(self) -> None:
        """Forget the record (its batches and outputs hold memory)."""
        self._record.clear()
        self._position = 0

    def forward(self, x: Tensor) -> Tensor:
        if torch.is_grad_enabled() and x.requires_grad:
            return self.model(x)  # a recorded output has no graph back to this input
        if self._position < len(self._record):
            seen, output = self._record[self._position]
            self._position += 1
            if seen.shape == x.shape and torch.equal(seen, x):
                self.n_replayed += 1
                return output
            return self.model(x)
        output = self.model(x)
        self._record.append((x.detach(), output.detach()))
        self._position += 1
        return output
