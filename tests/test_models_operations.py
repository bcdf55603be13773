"""Candidate operations: shapes at stride 1 and 2, the maths of the less obvious ones."""
import pytest
import torch
import torch.nn.functional as F

from bayesnas.errors import GenotypeError
from bayesnas.models.operations import NUM_OPS, OPS, FactorizedReduce, ReLUConvBN, SepConv, batch_norm, make_op


def test_ops_names_and_order():
    assert OPS == ("none", "skip_connect", "max_pool_3x3", "avg_pool_3x3", "sep_conv_3x3",
                   "sep_conv_5x5", "sep_conv_7x7", "dil_conv_3x3", "dil_conv_5x5", "conv_7x1_1x7")
    assert NUM_OPS == 10


@pytest.mark.parametrize("name", OPS)
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("size", [8, 7])
def test_op_output_shape(name, stride, size):
    torch.manual_seed(0)
    op = make_op(name, 6, stride, affine=False)
    y = op(torch.randn(3, 6, size, size + 1))
    expected = (3, 6, -(-size // stride), -(-(size + 1) // stride))
    assert tuple(y.shape) == expected
    assert torch.isfinite(y).all()


def test_none_is_zero_and_skip_is_identity():
    x = torch.randn(2, 4, 6, 6)
    assert not make_op("none", 4, 2, False)(x).any()
    assert torch.equal(make_op("skip_connect", 4, 1, False)(x), x)
    assert isinstance(make_op("skip_connect", 4, 2, False), FactorizedReduce)


def test_unknown_op_lists_valid_names():
    with pytest.raises(GenotypeError, match="sep_conv_3x3.*conv_7x1_1x7"):
        make_op("sep_conv_9x9", 4, 1, False)


def test_avg_pool_excludes_padding():
    x = torch.ones(1, 1, 4, 4)
    assert torch.allclose(make_op("avg_pool_3x3", 1, 1, False)(x), x)


def test_batch_norm_uses_batch_statistics_without_buffers():
    bn = batch_norm(3, affine=True)
    assert list(bn.buffers()) == []
    x = 5 + 2 * torch.randn(8, 3, 4, 4)
    for mode in (bn.train, bn.eval):
        mode()
        y = bn(x)
        assert torch.allclose(y.mean((0, 2, 3)), torch.zeros(3), atol=1e-5)
        assert torch.allclose(y.var((0, 2, 3), unbiased=False), torch.ones(3), atol=1e-3)


@pytest.mark.parametrize("affine", [False, True])
def test_affine_flag(affine):
    op = make_op("sep_conv_3x3", 4, 1, affine)
    has_bn_params = any("bn" in n for n, _ in op.named_parameters())
    assert has_bn_params == affine


def test_factorized_reduce_samples_even_and_odd_pixels():
    fr = FactorizedReduce(2, 2, affine=False)
    with torch.no_grad():
        fr.conv_a.weight.fill_(1.0)
        fr.conv_b.weight.fill_(1.0)
    x = torch.arange(2 * 25, dtype=torch.float32).view(1, 2, 5, 5).abs()
    r = F.relu(x)
    a = (r[:, :, ::2, ::2]).sum(1, keepdim=True)
    b = F.pad(r[:, :, 1::2, 1::2], (0, 1, 0, 1)).sum(1, keepdim=True)
    expected = F.batch_norm(torch.cat([a, b], 1), None, None, training=True)
    assert torch.allclose(fr(x), expected, atol=1e-5)


def test_sep_conv_strides_only_first_depthwise():
    op = SepConv(4, 5, stride=2, affine=False)
    assert op.dw1.stride == (2, 2) and op.dw2.stride == (1, 1)
    assert op.dw1.groups == 4 and op.pw1.kernel_size == (1, 1)


def test_dil_conv_is_dilated():
    op = make_op("dil_conv_5x5", 4, 1, False)
    assert op.dw.dilation == (2, 2) and op.dw.padding == (4, 4)


def test_relu_conv_bn_preprocess():
    pre = ReLUConvBN(6, 4, 1, 1, 0, affine=False)
    assert pre(torch.randn(2, 6, 5, 5)).shape == (2, 4, 5, 5)


def test_conv_7x1_1x7_strides_columns_then_rows():
    op = make_op("conv_7x1_1x7", 2, 2, affine=False)
    assert op.conv_1x7.stride == (1, 2) and op.conv_7x1.stride == (2, 1)
    # 1x7: identity tap (keeps every row, every other column); 7x1: the tap below the centre
    # (reads row 2h + 1). Only this stride order gives x[2h + 1, 2w]; striding both axes in
    # the 1x7 convolution would give x[2h + 2, 2w].
    with torch.no_grad():
        op.conv_1x7.weight.zero_()
        op.conv_7x1.weight.zero_()
        for c in range(2):
            op.conv_1x7.weight[c, c, 0, 3] = 1.0
            op.conv_7x1.weight[c, c, 4, 0] = 1.0
    x = torch.rand(3, 2, 7, 9, dtype=torch.float64)
    op = op.double()
    y = op(x)
    assert y.shape == (3, 2, 4, 5)
    expected = F.batch_norm(F.pad(x, (0, 0, 0, 1))[:, :, 1::2, ::2], None, None, training=True)
    assert torch.allclose(y, expected, atol=1e-12)


def test_fixed_network_pooling_is_plain():
    x = torch.randn(4, 3, 6, 6)
    assert torch.equal(make_op("max_pool_3x3", 3, 1, affine=True)(x), F.max_pool2d(x, 3, 1, 1))
    assert torch.equal(make_op("avg_pool_3x3", 3, 2, affine=True)(x),
                       F.avg_pool2d(x, 3, 2, 1, count_include_pad=False))


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("shape", [(2, 3, 5, 7), (4, 64, 9, 11)])  # below and above the channels-last size
def test_max_pool_equals_plain_pooling_to_second_order(shape, stride):
    from bayesnas.models.operations import CHANNELS_LAST_POOL_MIN, max_pool_3x3

    assert (torch.Size(shape).numel() >= CHANNELS_LAST_POOL_MIN) == (shape[1] == 64)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(*shape, dtype=torch.float64, generator=g, requires_grad=True)
    w = torch.randn(F.max_pool2d(x, 3, stride, 1).shape, dtype=torch.float64, generator=g)
    results = []
    for pool in (max_pool_3x3, lambda t, s: F.max_pool2d(t, 3, s, 1)):
        y = pool(x.tanh(), stride)  # tanh: the second derivative reaches x through the pool
        (gx,) = torch.autograd.grad((y * w).sum(), x, create_graph=True)
        (ggx,) = torch.autograd.grad((gx ** 2).sum(), x)
        results.append((y, gx, ggx))
    assert results[0][0].is_contiguous()
    for ours, plain in zip(*results, strict=True):
        assert torch.equal(ours, plain)


def test_max_pool_keeps_channels_last_inputs_and_works_under_vmap():
    from bayesnas.models.operations import max_pool_3x3

    x = torch.randn(3, 4, 64, 9, 11, dtype=torch.float64)
    expected = torch.stack([F.max_pool2d(t, 3, 2, 1) for t in x])
    assert torch.equal(torch.func.vmap(lambda t: max_pool_3x3(t, 2))(x), expected)
    y = max_pool_3x3(x[0].contiguous(memory_format=torch.channels_last), 2)
    assert y.is_contiguous(memory_format=torch.channels_last) and torch.equal(y, expected[0])
