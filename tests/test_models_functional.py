"""ParamLayout: flat vector <-> parameter dict, through functional_call and gradients."""
import pytest
import torch
import torch.nn as nn
from torch.func import functional_call, vmap

from bayesnas.models import NUM_EDGES, NUM_OPS, Conv4, ParamLayout, SearchNetwork, count_parameters


def tiny_net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.BatchNorm2d(2, track_running_stats=False),
                         nn.ReLU(), nn.Flatten(), nn.Linear(2 * 4 * 4, 3)).double()


def test_layout_round_trip():
    net = tiny_net()
    layout = ParamLayout.from_module(net)
    assert layout.numel == count_parameters(net) == 2 * 9 + 2 + 2 + 2 + 32 * 3 + 3
    assert layout.names == tuple(n for n, _ in net.named_parameters())
    vec = layout.flatten(net)
    assert vec.shape == (layout.numel,)
    params = layout.unflatten(vec)
    for name, p in net.named_parameters():
        assert torch.equal(params[name], p)
    assert torch.equal(layout.flatten(params), vec)


def test_functional_call_matches_module_and_fd_gradient():
    net = tiny_net()
    layout = ParamLayout.from_module(net)
    x = torch.randn(5, 1, 4, 4, dtype=torch.float64)
    vec = layout.flatten(net).detach().requires_grad_()
    out = functional_call(net, layout.unflatten(vec), (x,))
    assert torch.allclose(out, net(x))

    def loss(v):
        return functional_call(net, layout.unflatten(v), (x,)).pow(2).sum()

    g, = torch.autograd.grad(loss(vec), vec)
    eps = 1e-6
    for i in range(0, layout.numel, 7):
        e = torch.zeros_like(vec)
        e[i] = eps
        fd = (loss(vec + e) - loss(vec - e)) / (2 * eps)
        assert abs(fd.item() - g[i].item()) < 1e-6 * max(1.0, abs(fd.item()))
    assert torch.autograd.gradcheck(loss, (vec,))


def test_batched_unflatten_and_vmap():
    net = tiny_net()
    layout = ParamLayout.from_module(net)
    base = layout.flatten(net).detach()
    thetas = torch.stack([base, base + 0.01 * torch.randn_like(base), base * 0.5])
    batched = layout.unflatten(thetas)
    w = batched["0.weight"]
    assert w.shape == (3, 2, 1, 3, 3)
    assert torch.equal(layout.flatten(batched), thetas)
    x = torch.randn(3, 4, 1, 4, 4, dtype=torch.float64)
    out = vmap(lambda v, xt: functional_call(net, layout.unflatten(v), (xt,)))(thetas, x)
    for t in range(3):
        assert torch.allclose(out[t], functional_call(net, layout.unflatten(thetas[t]), (x[t],)))


def test_supernet_through_flat_vector():
    net = SearchNetwork(C=2, layers=2)
    layout = ParamLayout.from_module(net)
    theta = layout.flatten(net).detach().requires_grad_()
    z = torch.softmax(torch.randn(NUM_EDGES, NUM_OPS), -1)
    x = torch.randn(3, 1, 6, 6)
    out = functional_call(net, layout.unflatten(theta), (x, z, z))
    assert torch.allclose(out, net(x, z, z), atol=1e-6)
    g, = torch.autograd.grad(out.sum(), theta)
    assert g.shape == theta.shape and g.abs().sum() > 0


def test_copy_to_module_and_errors():
    net = Conv4(1, 5, hidden=4, image_size=16)
    layout = ParamLayout.from_module(net)
    vec = torch.randn(layout.numel)
    layout.copy_to_module(vec, net)
    assert torch.equal(layout.flatten(net).detach(), vec)
    with pytest.raises(ValueError, match="expected \\[..., "):
        layout.unflatten(torch.zeros(layout.numel + 1))
    params = dict(net.named_parameters())
    params.pop("classifier.bias")
    with pytest.raises(ValueError, match="missing parameter"):
        layout.flatten(params)
    params = dict(net.named_parameters())
    params["classifier.bias"] = torch.zeros(6)
    with pytest.raises(ValueError, match="classifier.bias has shape"):
        layout.flatten(params)


def test_count_parameters_trainable_only():
    net = tiny_net()
    net[0].weight.requires_grad_(False)
    assert count_parameters(net, trainable_only=True) == count_parameters(net) - 18
