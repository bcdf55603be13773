"""Candidate operations of the search space, one nn.Module per operation.

Every operation maps ``[B, C, H, W]`` to ``[B, C, ceil(H/s), ceil(W/s)]`` for stride
``s`` in {1, 2}. The order is ReLU-Conv-BN; convolutions carry no bias; BatchNorm keeps
no running statistics, so it always normalises with the statistics of the batch it
sees (MAML style: a task's support and query batches are never mixed). Only the first
convolution of an operation strides, except in ``conv_7x1_1x7``, whose two convolutions
each stride along one axis. Pooling is plain here (the fixed networks' op); the search
supernet follows it with a BatchNorm (:data:`POOL_OPS`).

Example:

>>> op = make_op("sep_conv_3x3", C=16, stride=2, affine=False)
>>> op(torch.randn(8, 16, 28, 28)).shape
torch.Size([8, 16, 14, 14])
>>> OPS.index("skip_connect")
1
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import GenotypeError

OPS = (
    "none",
    "skip_connect",
    "max_pool_3x3",
    "avg_pool_3x3",
    "sep_conv_3x3",
    "sep_conv_5x5",
    "sep_conv_7x7",
    "dil_conv_3x3",
    "dil_conv_5x5",
    "conv_7x1_1x7",
)
NUM_OPS = len(OPS)
# In the search supernet these are followed by a BatchNorm without affine parameters, as in
# DARTS's mixed op: unnormalised, the parameter-free ops would win the mixture by the scale
# of their output, not by merit. Fixed networks keep plain pooling.
POOL_OPS = ("max_pool_3x3", "avg_pool_3x3")

# Kernel size of the depthwise convolutions of the separable and dilated operations.
SEP_KERNELS = {"sep_conv_3x3": 3, "sep_conv_5x5": 5, "sep_conv_7x7": 7}
DIL_KERNELS = {"dil_conv_3x3": 3, "dil_conv_5x5": 5}
DILATION = 2


def batch_norm(C: int, affine: bool) -> nn.Module:
    """BatchNorm over ``C`` channels that always uses the current batch's statistics.

    Shapes: ``[B, C, H, W] -> [B, C, H, W]``. No running statistics are kept, so train and
    eval mode behave the same and the module has no buffers.
    """
    return nn.BatchNorm2d(C, affine=affine, track_running_stats=False)


#: Below this many elements a 3x3 max pool runs in the tensor's own (NCHW) layout; at or above
#: it, on CPU, through a channels-last copy (the pooling grid of benchmarks/bench_evaluate.py:
#: PyTorch's NCHW CPU max pool with a 3x3 window is 1.3-4x slower, forward and backward, than
#: the channels-last kernel plus both layout copies once a tensor holds ~16k elements; below,
#: the copies cost more than they save).
CHANNELS_LAST_POOL_MIN = 16384


def max_pool_3x3(x, stride):
    """3x3 max pooling with padding 1: ``[B, C, H, W] -> [B, C, ceil(H/s), ceil(W/s)]``.

    Identical values and gradients with respect to ``x`` (first and second order) to
    ``F.max_pool2d(x, 3, stride, 1)``; on CPU, tensors of at least
    :data:`CHANNELS_LAST_POOL_MIN` elements in NCHW layout are pooled in channels-last layout
    and returned contiguous (NCHW), which is faster there; channels-last inputs (the search
    supernet's convolutions return them) and calls inside ``torch.func`` transforms pool as
    they are. The gradient then leaves the pool in channels-last layout, so the layers
    before it may round differently in their backward (per-task float32 accuracies of
    40-task evaluations were identical in 11 of 12 network/setting pairs measured,
    benchmarks/bench_evaluate.py).
    """
    if (x.device.type == "cpu" and x.dim() == 4 and x.numel() >= CHANNELS_LAST_POOL_MIN
            and not torch._C._are_functorch_transforms_active()  # vmap cannot change layouts
            and not x.is_contiguous(memory_format=torch.channels_last)):
        y = F.max_pool2d(x.contiguous(memory_format=torch.channels_last), 3, stride, 1)
        return y.contiguous()
    return F.max_pool2d(x, 3, stride, 1)  # a channels-last input already takes the fast kernel


class MaxPool3x3(nn.Module):
    """The ``max_pool_3x3`` operation (:func:`max_pool_3x3`); no parameters."""

    def __init__(self, stride):
        super().__init__()
        self.stride = stride

    def forward(self, x):
        return max_pool_3x3(x, self.stride)

    def extra_repr(self):
        return f"stride={self.stride}"


class Zero(nn.Module):
    """The ``none`` operation: zeros of the output size (``[B, C, ceil(H/s), ceil(W/s)]``).
    """

    def __init__(self, stride):
        super().__init__()
        self.stride = stride

    def forward(self, x):
        B, C, H, W = x.shape
        s = self.stride
        return x.new_zeros(B, C, -(-H // s), -(-W // s))


class ReLUConvBN(nn.Module):
    """ReLU, a ``kernel_size`` convolution ``C_in -> C_out``, BatchNorm.

    Shapes: ``[B, C_in, H, W] -> [B, C_out, H', W']``. Used (1x1) to preprocess cell inputs.
    """

    def __init__(self, C_in, C_out, kernel_size, stride, padding, affine):
        super().__init__()
        self.conv = nn.Conv2d(C_in, C_out, kernel_size, stride=stride, padding=padding, bias=False)
        self.bn = batch_norm(C_out, affine)

    def forward(self, x):
        return self.bn(self.conv(F.relu(x)))


def shift_to_odd_pixels(x):
    """``x [B, C, H, W]`` moved up-left by one pixel (zeros beyond the border).

    A stride-2 sampling of the result reads the odd pixels that a stride-2 sampling of
    ``x`` skips: the second half of a factorized reduce.
    """
    return F.pad(x[:, :, 1:, 1:], (0, 1, 0, 1))


class FactorizedReduce(nn.Module):
    """Halve the resolution without losing every other pixel.

    ReLU, then two 1x1 stride-2 convolutions: one on ``x`` (even pixels) and one on ``x``
    shifted by one pixel (odd pixels, zero beyond the border), concatenated to ``C_out``
    channels (``C_out // 2`` and the rest), then BatchNorm.
    Shapes: ``[B, C_in, H, W] -> [B, C_out, ceil(H/2), ceil(W/2)]``.
    """

    def __init__(self, C_in, C_out, affine):
        super().__init__()
        self.conv_a = nn.Conv2d(C_in, C_out // 2, 1, stride=2, bias=False)
        self.conv_b = nn.Conv2d(C_in, C_out - C_out // 2, 1, stride=2, bias=False)
        self.bn = batch_norm(C_out, affine)

    def forward(self, x):
        x = F.relu(x)
        return self.bn(torch.cat([self.conv_a(x), self.conv_b(shift_to_odd_pixels(x))], dim=1))


class SepConv(nn.Module):
    """Separable convolution, applied twice: (ReLU, depthwise kxk, pointwise 1x1, BN) x 2.

    Only the first depthwise convolution strides.
    Shapes: ``[B, C, H, W] -> [B, C, ceil(H/s), ceil(W/s)]``.
    """

    def __init__(self, C, kernel_size, stride, affine):
        super().__init__()
        pad = kernel_size // 2
        self.dw1 = nn.Conv2d(C, C, kernel_size, stride=stride, padding=pad, groups=C, bias=False)
        self.pw1 = nn.Conv2d(C, C, 1, bias=False)
        self.bn1 = batch_norm(C, affine)
        self.dw2 = nn.Conv2d(C, C, kernel_size, padding=pad, groups=C, bias=False)
        self.pw2 = nn.Conv2d(C, C, 1, bias=False)
        self.bn2 = batch_norm(C, affine)

    def forward(self, x):
        x = self.bn1(self.pw1(self.dw1(F.relu(x))))
        return self.bn2(self.pw2(self.dw2(F.relu(x))))


class DilConv(nn.Module):
    """Dilated separable convolution, once: ReLU, depthwise kxk dilation 2, pointwise, BN.

    Shapes: ``[B, C, H, W] -> [B, C, ceil(H/s), ceil(W/s)]`` (padding ``k - 1``).
    """

    def __init__(self, C, kernel_size, stride, affine):
        super().__init__()
        pad = DILATION * (kernel_size - 1) // 2
        self.dw = nn.Conv2d(C, C, kernel_size, stride=stride, padding=pad, dilation=DILATION,
                            groups=C, bias=False)
        self.pw = nn.Conv2d(C, C, 1, bias=False)
        self.bn = batch_norm(C, affine)

    def forward(self, x):
        return self.bn(self.pw(self.dw(F.relu(x))))


class Conv7x1_1x7(nn.Module):
    """The ``conv_7x1_1x7`` operation: ReLU, a full 1x7 convolution, a full 7x1 one, BN.

    Each convolution strides along the axis its kernel spans, as in DARTS: the 1x7 one by
    ``(1, s)`` (across columns), the 7x1 one by ``(s, 1)`` (across rows).
    Shapes: ``[B, C, H, W] -> [B, C, ceil(H/s), ceil(W/s)]``.
    """

    def __init__(self, C, stride, affine):
        super().__init__()
        self.conv_1x7 = nn.Conv2d(C, C, (1, 7), stride=(1, stride), padding=(0, 3), bias=False)
        self.conv_7x1 = nn.Conv2d(C, C, (7, 1), stride=(stride, 1), padding=(3, 0), bias=False)
        self.bn = batch_norm(C, affine)

    def forward(self, x):
        return self.bn(self.conv_7x1(self.conv_1x7(F.relu(x))))


def _check_op_name(name):
    if name not in OPS:
        raise GenotypeError(f"unknown operation {name!r}: expected one of {', '.join(OPS)}")


def make_op(name: str, C: int, stride: int, affine: bool) -> nn.Module:
    """Build the operation ``name`` on ``C`` channels (``stride`` 1 or 2).

    Shapes: ``[B, C, H, W] -> [B, C, ceil(H/stride), ceil(W/stride)]``. ``affine`` gives
    the BatchNorms a learnable scale and shift (fixed networks) or not (search supernet).
    An unknown ``name`` raises :class:`~bayesnas.errors.GenotypeError` listing :data:`OPS`.
    """
    _check_op_name(name)
    if stride not in (1, 2):
        raise ValueError(f"stride must be 1 or 2, got {stride!r}")
    if name == "none":
        return Zero(stride)
    if name == "skip_connect":
        return nn.Identity() if stride == 1 else FactorizedReduce(C, C, affine)
    if name == "max_pool_3x3":
        return MaxPool3x3(stride)
    if name == "avg_pool_3x3":
        return nn.AvgPool2d(3, stride=stride, padding=1, count_include_pad=False)
    if name in SEP_KERNELS:
        return SepConv(C, SEP_KERNELS[name], stride, affine)
    if name in DIL_KERNELS:
        return DilConv(C, DIL_KERNELS[name], stride, affine)
    return Conv7x1_1x7(C, stride, affine)
