"""Fixed networks: NetworkFromGenotype, Conv4 and build_network."""
import pytest
import torch
from torch.func import functional_call

from bayesnas.errors import ConfigError, GenotypeError
from bayesnas.models import (
    DARTS_V2,
    Conv4,
    NetworkFromGenotype,
    build_network,
    count_parameters,
    random_genotype,
    save_genotype,
)
from bayesnas.models.operations import FactorizedReduce


@pytest.mark.parametrize("in_ch,size", [(1, 28), (3, 84), (1, 9)])
def test_network_from_genotype_shapes(in_ch, size):
    torch.manual_seed(0)
    net = NetworkFromGenotype(DARTS_V2, in_channels=in_ch, num_classes=5, C=4, layers=5)
    out = net(torch.randn(2, in_ch, size, size))
    assert out.shape == (2, 5) and torch.isfinite(out).all()
    assert [i for i, c in enumerate(net.cells) if c.reduction] == [1, 3]
    assert list(net.buffers()) == []


def test_network_from_genotype_structure():
    net = NetworkFromGenotype(DARTS_V2, C=4, layers=3)
    normal, reduce_ = net.cells[0], net.cells[1]
    assert len(normal.ops) == 8 and len(reduce_.ops) == 8
    # reduction cell: edges from inputs 0, 1 stride; skip_connect from state 2 does not
    assert isinstance(reduce_.ops[2], torch.nn.Identity)
    assert reduce_.ops[0].stride == 2
    bns = [m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns and all(m.affine and not m.track_running_stats for m in bns)
    # the cell after a reduction factorises its first input
    net5 = NetworkFromGenotype(DARTS_V2, C=4, layers=5)
    assert isinstance(net5.cells[2].pre0, FactorizedReduce)


def test_random_genotypes_build_and_run():
    for seed in range(4):
        g = random_genotype(seed)
        net = NetworkFromGenotype(g, C=2, layers=3)
        assert net(torch.randn(2, 1, 8, 8)).shape == (2, 5)


def test_concat_subset_sets_channels():
    g = DARTS_V2._replace(normal_concat=[4, 5])
    net = NetworkFromGenotype(g, C=4, layers=3)
    out = net.cells[0](torch.randn(2, 12, 8, 8), torch.randn(2, 12, 8, 8))
    assert out.shape == (2, 8, 8, 8)
    assert net(torch.randn(2, 1, 8, 8)).shape == (2, 5)


def test_invalid_genotype_rejected():
    with pytest.raises(GenotypeError):
        NetworkFromGenotype(DARTS_V2._replace(normal=DARTS_V2.normal[:4]))


@pytest.mark.parametrize("in_ch,size,flat", [(1, 28, 64), (3, 84, 64 * 25), (3, 32, 64 * 4)])
def test_conv4_shapes(in_ch, size, flat):
    net = Conv4(in_channels=in_ch, num_classes=5, hidden=64, image_size=size)
    assert net.flat_features == flat
    assert net(torch.randn(3, in_ch, size, size)).shape == (3, 5)
    assert list(net.buffers()) == []


def test_conv4_errors():
    with pytest.raises(ConfigError, match="at least 16"):
        Conv4(image_size=12)
    with pytest.raises(ValueError, match="image_size"):
        Conv4(image_size=28)(torch.randn(1, 1, 84, 84))


def test_build_network_variants(tmp_path):
    assert isinstance(build_network("conv4", 3, 5, 84), Conv4)
    assert isinstance(build_network("CONV4", 1, 5, 28, hidden=8), Conv4)
    net = build_network("darts_v2", 1, 5, 28, C=4, layers=3)
    assert isinstance(net, NetworkFromGenotype) and net.genotype == DARTS_V2
    g = random_genotype(5)
    assert build_network(g, 1, 5, 28, C=4, layers=3).genotype == g
    path = tmp_path / "genotype.json"
    save_genotype(g, path)
    assert build_network(str(path), 1, 5, 28, C=4, layers=3).genotype == g
    assert build_network(path, 1, 5, 28, C=4, layers=3).genotype == g
    with pytest.raises(GenotypeError, match="conv4"):
        build_network("resnet12", 1, 5, 28)
    with pytest.raises(GenotypeError, match="missing.json: genotype file not found"):
        build_network(str(tmp_path / "missing.json"), 1, 5, 28)
    with pytest.raises(GenotypeError):
        build_network(42, 1, 5, 28)


def test_parameter_counts():
    assert count_parameters(Conv4(1, 5, 64, 28)) == 4 * 64 * 2 + 9 * 64 + 3 * 9 * 64 * 64 + 64 * 5 + 5
    net = NetworkFromGenotype(DARTS_V2, in_channels=3, C=16, layers=5)
    assert count_parameters(net) == sum(p.numel() for p in net.parameters())


def test_second_order_through_fixed_network():
    torch.manual_seed(0)
    net = NetworkFromGenotype(DARTS_V2, C=2, layers=3).double()
    x = torch.randn(4, 1, 8, 8, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 3])
    params = dict(net.named_parameters())
    loss = torch.nn.functional.cross_entropy(functional_call(net, params, (x,)), y)
    grads = torch.autograd.grad(loss, list(params.values()), create_graph=True)
    adapted = {k: p - 0.1 * g for (k, p), g in zip(params.items(), grads, strict=True)}
    torch.nn.functional.cross_entropy(functional_call(net, adapted, (x,)), y).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.parameters())
