"""Grouped 2-D convolution with fast derivatives of every order.

Why this exists: PyTorch's double backward of a grouped convolution
(``_convolution_double_backward``) computes one term with a C++ loop over the groups,
one small convolution per group. For the supernet's depthwise convolutions (hundreds of
groups) that loop was 90% of a second-order MAML step (55 s of a 60 s step, measured).
Here the convolution, its input gradient and its weight gradient are three autograd
Functions whose derivatives are each other, all computed by whole grouped calls:

    conv(x, w)              d/dx -> input_grad(g, w)      d/dw -> weight_grad(x, g)
    input_grad(g, w)        d/dg -> conv(gg, w)           d/dw -> weight_grad(gg, g)
    weight_grad(x, g)       d/dx -> input_grad(g, gg)     d/dg -> conv(x, gg)

(all three are bilinear, which is what makes this closed). For stride 1 the input
gradient is itself a forward convolution (flipped kernel, in/out channels swapped per
group), which oneDNN runs as fast as or much faster than its backward-data primitive
(8x for dilated depthwise kernels, measured). On CPU the work runs in
channels-last memory format, where oneDNN's depthwise backward is 2-4x faster than in
NCHW, except for strided dilated kernels, where NCHW is 3x faster (measured on the
2-core dev CPU, oneDNN 3.12). Inside torch.func transforms (vmap, grad) it falls back to
``F.conv2d``: same values, the slower double backward. Under autocast (bf16) it computes
in the autocast dtype as ``F.conv2d`` does, every derivative in one dtype (:func:`_functions`).
"""
import contextlib
import functools

import torch
import torch.nn as nn
import torch.nn.functional as F

_aten = torch.ops.aten


def _pair(v):
    return [v, v] if isinstance(v, int) else list(v)


def _channels_last(device, params):
    stride, _, dilation, _ = params
    return device.type == "cpu" and not (max(stride) > 1 and max(dilation) > 1)


def _fmt(t, params):
    if _channels_last(t.device, params):
        return t.contiguous(memory_format=torch.channels_last)
    return t.contiguous()


def _conv(x, w, params):
    stride, padding, dilation, groups = params
    return F.conv2d(_fmt(x, params), w, None, stride, padding, dilation, groups)


def _input_grad(g, w, x_shape, params):
    stride, padding, dilation, groups = params
    if max(stride) == 1:
        # Stride 1: the input gradient is the forward convolution of g with the kernel
        # flipped and its in/out channels swapped within each group. oneDNN's forward is
        # as fast as or up to 8x faster than its backward-data primitive (dilated kernels).
        kernel = w.shape[-2:]
        pad = [d * (k - 1) - p for d, k, p in zip(dilation, kernel, padding, strict=True)]
        if min(pad) >= 0:
            out_pg, in_pg = w.shape[0] // groups, w.shape[1]
            wt = w.view(groups, out_pg, in_pg, *kernel).transpose(1, 2).flip(-2, -1)
            return F.conv2d(_fmt(g, params), wt.reshape(groups * in_pg, out_pg, *kernel), None,
                            1, pad, dilation, groups)
    fmt = torch.channels_last if _channels_last(g.device, params) else torch.contiguous_format
    x_like = torch.empty(x_shape, dtype=g.dtype, device=g.device, memory_format=fmt)
    return _aten.convolution_backward(_fmt(g, params), x_like, w, None, stride, padding, dilation,
                                      False, [0, 0], groups, [True, False, False])[0]


def _weight_grad(x, g, w_shape, params):
    stride, padding, dilation, groups = params
    w_like = g.new_empty(w_shape)
    if g.device.type == "cpu" and groups == 1 and max(stride) > 1 and tuple(w_shape[-2:]) == (1, 1):
        # oneDNN (torch 2.13) corrupts the heap computing this one in channels-last float32 for
        # fewer than 8 channels (a crash or a hang, measured); NCHW is exact
        x, g = x.contiguous(), g.contiguous()
    else:
        x, g = _fmt(x, params), _fmt(g, params)
    return _aten.convolution_backward(g, x, w_like, None, stride, padding, dilation, False, [0, 0], groups,
                                      [False, True, False])[1]


@functools.cache
def _functions(device_type):
    """The three Functions for tensors on ``device_type``, each derivative of every order run
    with autocast off (``custom_fwd``/``custom_bwd`` take the device type they guard).

    Cast policy under autocast: :func:`conv2d` casts ``x`` and ``w`` to the autocast dtype
    (bf16 or fp16; float64 is left alone, as autocast leaves it) *before* the Functions, by
    ordinary differentiable casts, and applies them with autocast disabled. Inside, every
    call (forward, input and weight gradients, their derivatives) then sees one dtype:
    no float32/bf16 mix, whatever autocast state ``backward``/``autograd.grad`` is called in
    (``custom_bwd`` restores forward's: off). The casts' own backward returns the gradients
    of float32 master weights in float32. Casting inside ``forward`` instead
    (``custom_fwd(cast_inputs=...)``) would save cast copies without autograd history, and
    the double backward would drop the terms through ``x`` and ``w`` without an error.
    """
    if torch.amp.is_autocast_available(device_type):
        fwd, bwd = torch.amp.custom_fwd(device_type=device_type), torch.amp.custom_bwd(device_type=device_type)
    else:  # a device autocast does not know (the meta device of parameter counts): nothing to guard
        def fwd(f):
            return f
        bwd = fwd

    class Conv(torch.autograd.Function):
        @staticmethod
        @fwd
        def forward(ctx, x, w, params):
            ctx.params = params
            ctx.save_for_backward(x, w)
            return _conv(x, w, params)

        @staticmethod
        @bwd
        def backward(ctx, g):
            x, w = ctx.saved_tensors
            g = _fmt(g, ctx.params)  # once for both calls, and recorded for higher orders
            gx = InputGrad.apply(g, w, tuple(x.shape), ctx.params) if ctx.needs_input_grad[0] else None
            gw = WeightGrad.apply(x, g, tuple(w.shape), ctx.params) if ctx.needs_input_grad[1] else None
            return gx, gw, None

    class InputGrad(torch.autograd.Function):
        @staticmethod
        @fwd
        def forward(ctx, g, w, x_shape, params):
            ctx.params = params
            ctx.save_for_backward(g, w)
            return _input_grad(g, w, x_shape, params)

        @staticmethod
        @bwd
        def backward(ctx, gg):
            g, w = ctx.saved_tensors
            gg = _fmt(gg, ctx.params)
            d_g = Conv.apply(gg, w, ctx.params) if ctx.needs_input_grad[0] else None
            d_w = WeightGrad.apply(gg, g, tuple(w.shape), ctx.params) if ctx.needs_input_grad[1] else None
            return d_g, d_w, None, None

    class WeightGrad(torch.autograd.Function):
        @staticmethod
        @fwd
        def forward(ctx, x, g, w_shape, params):
            ctx.params = params
            ctx.save_for_backward(x, g)
            return _weight_grad(x, g, w_shape, params)

        @staticmethod
        @bwd
        def backward(ctx, gg):
            x, g = ctx.saved_tensors
            d_x = InputGrad.apply(g, gg, tuple(x.shape), ctx.params) if ctx.needs_input_grad[0] else None
            d_g = Conv.apply(x, gg, ctx.params) if ctx.needs_input_grad[1] else None
            return d_x, d_g, None, None

    return Conv


def _autocast_dtype(t):
    """The dtype autocast would run a convolution of ``t`` in (None: autocast is off or leaves ``t`` alone)."""
    kind = t.device.type
    if (not torch.amp.is_autocast_available(kind) or not torch.is_autocast_enabled(kind)
            or t.dtype == torch.float64 or not t.is_floating_point()):
        return None
    return torch.get_autocast_dtype(kind)


def _autocast_off(device_type):
    """A block with autocast off on ``device_type`` (nothing to turn off on a device autocast does not know)."""
    if torch.amp.is_autocast_available(device_type):
        return torch.autocast(device_type, enabled=False)
    return contextlib.nullcontext()


def conv_input(x):
    """``x`` in the memory layout :func:`conv2d` computes in (channels-last on CPU).

    For a tensor that feeds several convolutions: converted once here, not once per call.
    """
    if x.device.type != "cpu" or torch._C._are_functorch_transforms_active():
        return x
    return x.contiguous(memory_format=torch.channels_last)


def conv2d(x, w, stride=1, padding=0, dilation=1, groups=1):
    """``F.conv2d`` without bias, with whole-call derivatives of every order (see module doc).

    Shapes: ``x [B, C_in, H, W]``, ``w [C_out, C_in / groups, kh, kw]`` ->
    ``[B, C_out, H', W']``; the output may be channels-last on CPU. Under autocast, as
    ``F.conv2d``: computed and returned in the autocast dtype (bf16), gradients of float32
    ``x`` and ``w`` in float32 (see :func:`_functions`).
    """
    params = (_pair(stride), _pair(padding), _pair(dilation), groups)
    if torch._C._are_functorch_transforms_active():
        return F.conv2d(x, w, None, *params)
    dtype = _autocast_dtype(x)
    if dtype is not None:  # the cast policy of _functions: cast here, differentiably
        x, w = x.to(dtype), w.to(dtype)
    # Converted outside the Function so that the saved input is already in the layout
    # every derivative wants, and the conversion is differentiated like any other op.
    with _autocast_off(x.device.type):
        return _functions(x.device.type).apply(_fmt(x, params), w, params)


class Conv2d(nn.Conv2d):
    """:class:`torch.nn.Conv2d` computed by :func:`conv2d`: the same parameters, state dict and
    function, with whole-call derivatives of every order (second-order MAML through a grouped
    convolution then avoids PyTorch's per-group double backward). Padding given as a string
    or a padding mode other than zeros falls back to nn.Conv2d's own computation.
    """

    def _conv_forward(self, input, weight, bias):
        if isinstance(self.padding, str) or self.padding_mode != "zeros":
            return super()._conv_forward(input, weight, bias)
        y = conv2d(input, weight, self.stride, self.padding, self.dilation, self.groups)
        # the bias in the output's dtype: bf16 under autocast, as nn.Conv2d's
        return y if bias is None else y + bias.to(y.dtype).view(1, -1, 1, 1)


def use_whole_call_convolutions(module):
    """Turn every :class:`torch.nn.Conv2d` of ``module`` into a :class:`Conv2d`, in place; returns ``module``."""
    for m in module.modules():
        if type(m) is nn.Conv2d:
            m.__class__ = Conv2d
    return module
