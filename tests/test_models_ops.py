"""Candidate operations: shapes at stride 1 and 2, the maths of the less obvious ones."""
import pytest
import torch
import torch.nn.functional as F

from bayesnas.errors import GenotypeError
from bayesnas.models.operations import (NUM_OPS, OPS, FactorizedReduce, ReLUConvBN, SepConv,
                                        batch_norm, make_op)


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
