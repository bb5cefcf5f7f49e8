"""Side lengths through the backbone's conv blocks: pure arithmetic, no PyTorch.

:class:`~cosmo_sop.models.backbone.ConvRegressor` builds its layers from these sizes, and
:mod:`cosmo_sop.config` checks a config's patch size with them before any job runs, in
environments without PyTorch (the data-stage rules), so the rule lives here, once.

A block is a valid (unpadded) convolution, side -> side - kernel_size + 1, then a 2 x 2
max-pool with floor division, side -> side // 2.
"""

from __future__ import annotations


def block_output_sizes(input_size: int, n_blocks: int, kernel_size: int) -> list[int]:
    """Side length of the feature map after each of ``n_blocks`` conv blocks.

    Raises
    ------
    ValueError
        If the map shrinks to nothing before the last block.
    """
    sizes = []
    side = input_size
    for index in range(n_blocks):
        side = (side - kernel_size + 1) // 2
        if side < 1:
            raise ValueError(
                f"input_size={input_size} is too small for {n_blocks} conv blocks of kernel "
                f"{kernel_size} and 2 x 2 pooling: the feature map vanishes after block {index + 1}"
            )
        sizes.append(side)
    return sizes


def smallest_input_size(n_blocks: int, kernel_size: int) -> int:
    """The smallest input side that keeps at least one pixel after ``n_blocks`` blocks.

    The rule of :func:`block_output_sizes` inverted block by block, from the last: an output
    side of at least ``s`` needs an input side of at least ``2 s + kernel_size - 1``.
    """
    side = 1
    for _ in range(n_blocks):
        side = 2 * side + kernel_size - 1
    return side
