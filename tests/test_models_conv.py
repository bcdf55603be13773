"""The fixed networks' convolutions (models/_conv.py's Conv2d): the same function and the same
first- and second-order gradients as nn.Conv2d, in float64."""
import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.func import functional_call

from bayesnas.models import build_network
from bayesnas.models._conv import Conv2d, use_whole_call_convolutions


def with_plain_convolutions(net):
    """A copy of ``net`` whose convolutions are PyTorch's own nn.Conv2d (same parameters)."""
    plain = copy.deepcopy(net)
    for m in plain.modules():
        if type(m) is Conv2d:
            m.__class__ = nn.Conv2d
    return plain


def maml_gradients(net, x, y, xq, yq):
    """First-order gradient of the support loss, and the second-order meta-gradient through one inner step."""
    params = {k: v for k, v in net.named_parameters()}
    loss = F.cross_entropy(functional_call(net, params, (x,)), y)
    grads = torch.autograd.grad(loss, list(params.values()), create_graph=True)
    fast = {k: p - 0.4 * g for (k, p), g in zip(params.items(), grads, strict=True)}
    outer = F.cross_entropy(functional_call(net, fast, (xq,)), yq)
    meta = torch.autograd.grad(outer, list(params.values()))
    return [g.detach() for g in grads], list(meta)


@pytest.mark.parametrize("arch", ["darts_v2", "conv4"])
def test_fixed_networks_use_whole_call_convolutions_with_equal_gradients(arch):
    torch.manual_seed(0)
    net = build_network(arch, in_channels=1, num_classes=5, image_size=16, C=4, layers=3, hidden=4).double()
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    assert convs and all(type(m) is Conv2d for m in convs)
    assert any(m.groups > 1 for m in convs) or arch == "conv4"  # darts_v2's separable convolutions are grouped
    plain = with_plain_convolutions(net)
    assert not any(type(m) is Conv2d for m in plain.modules())
    x, xq = torch.randn(5, 1, 16, 16, dtype=torch.float64), torch.randn(10, 1, 16, 16, dtype=torch.float64)
    y, yq = torch.arange(5), torch.arange(10) % 5
    torch.testing.assert_close(net(x), plain(x), rtol=1e-12, atol=1e-12)
    first, second = maml_gradients(net, x, y, xq, yq)
    first_ref, second_ref = maml_gradients(plain, x, y, xq, yq)
    for a, b in zip(first + second, first_ref + second_ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    assert max(g.abs().max() for g in second) > 1e-6  # the second-order terms are there


def test_a_network_keeps_its_state_dict_and_other_padding_falls_back():
    net = build_network("darts_v2", in_channels=1, num_classes=5, C=4, layers=3)
    plain = with_plain_convolutions(net)
    assert list(net.state_dict()) == list(plain.state_dict())
    conv = use_whole_call_convolutions(nn.Sequential(nn.Conv2d(2, 3, 3, padding="same", bias=True),
                                                     nn.Conv2d(3, 3, 3, padding=1, padding_mode="reflect")))
    x = torch.randn(2, 2, 6, 6)
    reference = with_plain_convolutions(conv)
    torch.testing.assert_close(conv(x), reference(x))
    with_bias = use_whole_call_convolutions(nn.Conv2d(2, 4, 3, padding=1, groups=2))
    torch.testing.assert_close(with_bias(x), F.conv2d(x, with_bias.weight, with_bias.bias, padding=1, groups=2))
