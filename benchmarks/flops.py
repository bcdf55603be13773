"""FLOP counting with ``torch.utils.flop_counter``, corrected for grouped convolutions.

``FlopCounterMode``'s formula for ``aten.convolution_backward`` counts the weight gradient
of a convolution with ``groups = g`` as if it were dense: ``g`` times too many FLOPs
(torch 2.13; the input-gradient and forward formulas are right). The supernet is made of
depthwise convolutions (``g`` = hundreds of channels), so the stock count of a
second-order step is inflated several-fold. :func:`count_flops` registers a formula
that counts both gradients of a grouped convolution at ``2 * B * C_out * (C_in / g) *
kh * kw * H_out * W_out`` each, the same as its forward.

Usage::

    flops = count_flops(lambda: step())        # FLOPs (multiply-adds count 2) of one call
"""
import math

import torch
from torch.utils.flop_counter import FlopCounterMode

aten = torch.ops.aten


def _conv_flops(out_shape, w_shape):
    """2 * B * C_out * (C_in / g) * prod(kernel) * prod(spatial out) of a (non-transposed) convolution."""
    return 2 * out_shape[0] * math.prod(w_shape) * math.prod(out_shape[2:])


def conv_backward_flops(grad_out_shape, x_shape, w_shape, _bias, _stride, _padding, _dilation, transposed,
                        _output_padding, _groups, output_mask, out_shape=None, **kwargs):
    """FLOPs of ``aten.convolution_backward``: each requested gradient costs one forward."""
    # For a transposed convolution the roles of input and output swap.
    out = x_shape if transposed else grad_out_shape
    return (int(output_mask[0]) + int(output_mask[1])) * _conv_flops(out, w_shape)


def count_flops(fn):
    """FLOPs of one call of ``fn()`` (matmuls, convolutions and their gradients)."""
    with FlopCounterMode(display=False, custom_mapping={aten.convolution_backward: conv_backward_flops}) as counter:
        fn()
    return counter.get_total_flops()
