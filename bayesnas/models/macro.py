"""The macro-architecture shared by the search supernet and the fixed networks.

stem (3x3 conv, BN) -> ``layers`` cells -> global average pooling -> linear. Cells at
:func:`reduction_indices` halve the resolution and double the channels.

Usage::

    reduction_indices(3)                      # [1, 2]   cells: normal, reduce, reduce
    reduction_indices(5)                      # [1, 3]   N R N R N
    stem = make_stem(1, 24, affine=False)     # [B, 1, H, W] -> [B, 24, H, W]
"""
import torch.nn as nn

from ..errors import ConfigError
from .operations import batch_norm


def reduction_indices(layers):
    """Indices of the reduction cells among ``layers`` cells.

    Cells ``layers // 3`` and ``2 * layers // 3``, except that cell 0 is never a reduction
    cell: the stem feeds a normal cell. So 1 cell: none (a single normal cell); 2 cells:
    [1]; 3 cells: [1, 2]; from 3 on the two positions are distinct and neither is 0.

    Usage::

        reduction_indices(8)                  # [2, 5]
        reduction_indices(2)                  # [1]
        assert reduction_indices(1) == []
    """
    if isinstance(layers, bool) or not isinstance(layers, int) or layers < 1:
        raise ConfigError(f"layers={layers!r}: expected a positive integer number of cells")
    return sorted({layers // 3, 2 * layers // 3} - {0})


def make_stem(in_channels, C_out, affine):
    """3x3 convolution (padding 1, no bias) then BatchNorm: ``[B, in, H, W] -> [B, C_out, H, W]``.

    Usage::

        stem = make_stem(3, 48, affine=True)
        y = stem(torch.randn(2, 3, 32, 32))    # [2, 48, 32, 32]
        assert y.shape[1] == 48
    """
    return nn.Sequential(nn.Conv2d(in_channels, C_out, 3, padding=1, bias=False),
                         batch_norm(C_out, affine))


def check_positive(**values):
    """Raise :class:`ConfigError` unless every keyword value is a positive int.

    Usage::

        check_positive(C=16, layers=5)
        check_positive(C=0)                   # ConfigError: C=0: expected a positive integer
        check_positive(steps=4, in_channels=3)
    """
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{name}={value!r}: expected a positive integer")
