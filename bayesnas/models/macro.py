"""The macro-architecture shared by the search supernet and the fixed networks.

stem (3x3 conv, BN) -> ``layers`` cells -> global average pooling -> linear. Cells at
:func:`reduction_indices` halve the resolution and double the channels.

Example:

>>> reduction_indices(3)       # cells: normal, reduce, reduce
[1, 2]
>>> reduction_indices(5)       # N R N R N
[1, 3]
"""
from typing import NamedTuple

import torch.nn as nn

from ..errors import ConfigError
from .operations import FactorizedReduce, ReLUConvBN, batch_norm


def reduction_indices(layers: int) -> list[int]:
    """Indices of the reduction cells among ``layers`` cells.

    Cells ``layers // 3`` and ``2 * layers // 3``, except that cell 0 is never a reduction
    cell: the stem feeds a normal cell. So 1 cell: none (a single normal cell); 2 cells:
    [1]; 3 cells: [1, 2]; from 3 on the two positions are distinct and neither is 0.
    """
    if isinstance(layers, bool) or not isinstance(layers, int) or layers < 1:
        raise ConfigError(f"layers={layers!r}: expected a positive integer number of cells")
    return sorted({layers // 3, 2 * layers // 3} - {0})


def make_stem(in_channels, C_out, affine):
    """3x3 convolution (padding 1, no bias) then BatchNorm: ``[B, in, H, W] -> [B, C_out, H, W]``.
    """
    return nn.Sequential(nn.Conv2d(in_channels, C_out, 3, padding=1, bias=False),
                         batch_norm(C_out, affine))


def check_positive(**values):
    """Raise :class:`ConfigError` unless every keyword value is a positive int.
    """
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{name}={value!r}: expected a positive integer")


class CellPlan(NamedTuple):
    """Where one cell sits in the macro-architecture and its channel counts."""

    reduction: bool
    reduction_prev: bool
    C_pp: int  #: channels of the cell's first input (two cells back)
    C_p: int  #: channels of its second input (the previous cell)
    C: int  #: channels of each of its nodes


def cell_plan(C, layers, stem_multiplier, outputs):
    """The cells of a network: ``(list of CellPlan, channels of the last cell's output)``.

    Reduction cells (at :func:`reduction_indices`) double the node channels; a cell's
    output concatenates ``outputs(reduction)`` nodes (an int is the same for both kinds).
    """
    count = outputs if callable(outputs) else (lambda reduction: outputs)
    reductions = reduction_indices(layers)
    C_pp = C_p = stem_multiplier * C
    C_cur, reduction_prev, plan = C, False, []
    for i in range(layers):
        reduction = i in reductions
        if reduction:
            C_cur *= 2
        plan.append(CellPlan(reduction, reduction_prev, C_pp, C_p, C_cur))
        reduction_prev = reduction
        C_pp, C_p = C_p, count(reduction) * C_cur
    return plan, C_p


def make_preprocess(plan, affine):
    """The two input preprocessings ``(pre0, pre1)`` of a cell at ``plan``.

    ``pre1`` is a 1x1 ReLUConvBN of the previous cell's output. ``pre0`` takes the cell two
    back: a 1x1 ReLUConvBN, or a FactorizedReduce when the previous cell halved the
    resolution; a reduction cell reads the previous output twice, so its ``pre0`` takes
    ``C_p`` channels.
    """
    if plan.reduction:
        pre0 = ReLUConvBN(plan.C_p, plan.C, 1, 1, 0, affine=affine)
    elif plan.reduction_prev:
        pre0 = FactorizedReduce(plan.C_pp, plan.C, affine=affine)
    else:
        pre0 = ReLUConvBN(plan.C_pp, plan.C, 1, 1, 0, affine=affine)
    return pre0, ReLUConvBN(plan.C_p, plan.C, 1, 1, 0, affine=affine)
