"""Second-order MAML retraining: meta-gradients against finite differences, and learning Omniglot."""
import json
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

from bayesnas.config import RetrainConfig
from bayesnas.data import open_data
from bayesnas.errors import ConfigError, DataError, GenotypeError, NonFiniteLossError, RunError
from bayesnas.models.genotypes import DARTS_V2, arch_config, genotype_to_dict, random_genotype, save_genotype
from bayesnas.training.loop import task_samplers
from bayesnas.training.retrain import (
    adapt_and_predict,
    adapt_task,
    build_retrain_network,
    load_retrain,
    maml_loss,
    meta_parameters,
    retrain,
    task_accuracies,
)
from tests.data_fixtures import mini_imagenet_file, write_fewshot_file


def tiny_problem(arch="conv4", size=16, layers=1):
    """A float64 network and a 2-task, 3-way meta-batch of ``size`` x ``size`` images."""
    torch.manual_seed(0)
    cfg = RetrainConfig(arch=arch, ways=3, channels=2, layers=layers)
    net = build_retrain_network(cfg, in_channels=1, image_size=size).double()
    # Away from the initialisation: with every BN bias exactly 0, a dead channel's BN output
    # sits exactly on a ReLU kink, and the inner gradient jumps there.
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.1 * torch.randn_like(p))
    g = torch.Generator().manual_seed(1)
    batch = SimpleNamespace(
        support_x=torch.rand(2, 6, 1, size, size, generator=g, dtype=torch.float64),
        support_y=torch.tensor([[0, 0, 1, 1, 2, 2]] * 2),
        query_x=torch.rand(2, 9, 1, size, size, generator=g, dtype=torch.float64),
        query_y=torch.tensor([[0, 0, 0, 1, 1, 1, 2, 2, 2]] * 2),
    )
    return net, batch


def meta_gradient(net, batch, first_order, steps=2, lr=0.3):
    params = meta_parameters(net)
    loss, _ = maml_loss(net, params, batch, steps, lr, first_order)
    grads = torch.autograd.grad(loss, list(params.values()))
    return loss.detach(), torch.cat([g.reshape(-1) for g in grads])


def loss_at(net, flat, batch, steps=2, lr=0.3):
    params, i = {}, 0
    for name, p in meta_parameters(net).items():
        params[name] = flat[i:i + p.numel()].view_as(p).detach().clone().requires_grad_(True)
        i += p.numel()
    return maml_loss(net, params, batch, steps, lr, first_order=False)[0].item()


@pytest.mark.parametrize("arch", ["conv4", "genotype"])
def test_second_order_meta_gradient_matches_central_differences(arch):
    if arch == "conv4":
        net, batch = tiny_problem("conv4")
    else:  # a random cell, 2 cells: a normal and a reduction cell
        net, batch = tiny_problem(genotype_to_dict(random_genotype(5)), size=8, layers=2)
    _, grad = meta_gradient(net, batch, first_order=False)
    flat = torch.cat([p.detach().reshape(-1) for p in meta_parameters(net).values()])
    # The objective is piecewise smooth (ReLU, max-pool inside the inner gradients): a
    # small step keeps the two evaluations on one piece; float64 keeps the roundoff ~1e-9.
    eps = 1e-7
    gen = torch.Generator().manual_seed(2)
    for _ in range(3):  # directional derivatives along random directions
        v = torch.randn(flat.shape, generator=gen, dtype=torch.float64)
        fd = (loss_at(net, flat + eps * v, batch) - loss_at(net, flat - eps * v, batch)) / (2 * eps)
        assert abs(fd - grad @ v) <= 1e-6 * max(1.0, abs(fd)), (fd, (grad @ v).item())
    for i in torch.randperm(flat.numel(), generator=gen)[:6].tolist():  # single coordinates
        e = torch.zeros_like(flat)
        e[i] = eps
        fd = (loss_at(net, flat + e, batch) - loss_at(net, flat - e, batch)) / (2 * eps)
        assert abs(fd - grad[i].item()) <= 1e-6 * max(1.0, abs(fd)), (i, fd, grad[i].item())


def test_first_order_drops_the_second_order_term():
    net, batch = tiny_problem()
    _, second = meta_gradient(net, batch, first_order=False)
    _, first = meta_gradient(net, batch, first_order=True)
    assert (second - first).norm() > 1e-3 * second.norm()
    # first-order MAML's gradient is the query gradient taken at the adapted weights
    params = meta_parameters(net)
    expected = 0
    for t in range(2):
        fast = adapt_task(net, params, batch.support_x[t], batch.support_y[t], 2, 0.3, first_order=True)
        fast = {k: v.detach().requires_grad_(True) for k, v in fast.items()}
        loss = F.cross_entropy(functional_call(net, fast, (batch.query_x[t],)), batch.query_y[t]) / 2
        expected = expected + torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, list(fast.values()))])
    assert torch.allclose(first, expected, rtol=1e-10, atol=1e-12)


def test_inner_loop_lowers_the_support_loss():
    net, batch = tiny_problem()
    params = meta_parameters(net)
    before = F.cross_entropy(functional_call(net, params, (batch.support_x[0],)), batch.support_y[0])
    fast = adapt_task(net, params, batch.support_x[0], batch.support_y[0], 5, 0.3)
    after = F.cross_entropy(functional_call(net, fast, (batch.support_x[0],)), batch.support_y[0])
    assert after < 0.8 * before


def batched_problem(arch):
    if arch == "conv4":
        return tiny_problem("conv4")
    return tiny_problem("darts_v2", layers=2)  # a normal and a reduction cell


@pytest.mark.parametrize("steps", [0, 1, 3])
@pytest.mark.parametrize("arch", ["conv4", "darts_v2"])
def test_batched_adaptation_equals_the_task_by_task_loop(arch, steps):
    net, batch = batched_problem(arch)
    params = meta_parameters(net)
    fast, logits, losses = adapt_and_predict(net, params, batch, steps, 0.3)
    assert logits.shape == (2, 9, 3) and losses.shape == (steps, 2) and not logits.requires_grad
    for t in range(2):
        alone = adapt_task(net, params, batch.support_x[t], batch.support_y[t], steps, 0.3, first_order=True)
        for name, value in alone.items():
            assert fast[name].shape == (2, *value.shape)
            torch.testing.assert_close(fast[name][t], value.detach(), rtol=0, atol=1e-10)
        torch.testing.assert_close(logits[t], functional_call(net, alone, (batch.query_x[t],)).detach(), rtol=0,
                                   atol=1e-10)
    if steps:  # the first support loss is the meta-parameters' own
        first = torch.stack([F.cross_entropy(functional_call(net, params, (batch.support_x[t],)), batch.support_y[t])
                             for t in range(2)]).detach()
        torch.testing.assert_close(losses[0], first, rtol=0, atol=1e-12)


@pytest.mark.parametrize("arch", ["conv4", "darts_v2"])
def test_batched_tasks_keep_their_own_batchnorm_statistics(arch):
    """Task 0 scored beside a task of very different images equals task 0 scored alone: mixing
    the two tasks' BatchNorm statistics would change both."""
    net, batch = batched_problem(arch)
    batch.support_x[1], batch.query_x[1] = 5 * batch.support_x[1] + 3, 5 * batch.query_x[1] + 3
    params = meta_parameters(net)
    fast, logits, _ = adapt_and_predict(net, params, batch, 2, 0.3)
    first = SimpleNamespace(**{k: v[:1] for k, v in vars(batch).items()})
    fast_alone, logits_alone, _ = adapt_and_predict(net, params, first, 2, 0.3)
    torch.testing.assert_close(logits[:1], logits_alone, rtol=0, atol=1e-10)
    torch.testing.assert_close(fast["classifier.weight"][:1], fast_alone["classifier.weight"], rtol=0, atol=1e-10)
    pooled = functional_call(net, params, (batch.query_x.flatten(0, 1),)).view(2, 9, 3)  # one BatchNorm over both
    assert (pooled[:1] - functional_call(net, params, (batch.query_x[0],))).abs().max() > 1e-3


@pytest.mark.parametrize("arch", ["conv4", "darts_v2"])
def test_batched_accuracies_equal_the_loop_on_real_tasks(arch):
    cfg = RetrainConfig(arch=arch, channels=8, layers=2, queries=3)
    data = open_data(None)  # 28x28 Omniglot: Conv-4 needs 16 pixels a side
    _, val = task_samplers(cfg, data, torch.device("cpu"))
    torch.manual_seed(0)
    net = build_retrain_network(cfg, data.channels, data.image_size[0])
    done = []
    loop = task_accuracies(net, val, range(7), 3, 0.4, chunk=3)
    batched = task_accuracies(net, val, range(7), 3, 0.4, chunk=3, batched=True, progress=done.append)
    assert torch.equal(loop, batched) and batched.shape == (7,) and batched.dtype == torch.float64
    assert done == [3, 6, 7] and loop.min() < loop.max()  # the tasks differ: the comparison means something
    bf16 = task_accuracies(net, val, range(3), 1, 0.4, precision="bf16")  # bf16 runs the loop either way
    assert torch.equal(task_accuracies(net, val, range(3), 1, 0.4, precision="bf16", batched=True), bf16)


def test_batched_accuracies_stop_at_a_non_finite_inner_loss():
    cfg = RetrainConfig(channels=4, queries=2)
    data = open_data(None)
    _, val = task_samplers(cfg, data, torch.device("cpu"))
    net = build_retrain_network(cfg, data.channels, data.image_size[0])
    with torch.no_grad():
        net.classifier.bias[0] = float("nan")
    for batched in (False, True):
        with pytest.raises(NonFiniteLossError, match=r"^inner step 0: objective is nan"):
            task_accuracies(net, val, range(4), 2, 0.4, batched=batched)


@pytest.mark.slow
def test_conv4_learns_omniglot_5_way_1_shot_well_above_chance(tmp_path):
    # one thread: two contend badly on two cores whenever anything else runs (docs/design.md §5)
    cfg = RetrainConfig(arch="conv4", channels=16, iterations=40, queries=5, val_every=40, val_tasks=60,
                        checkpoint_every=40, threads=1)
    result = retrain(None, cfg, out=tmp_path / "c4", progress=False)
    val = result.rows[-1]["val_acc"]
    assert val > 0.40, val  # chance is 0.20; 60 validation tasks of held-out characters (measured: 0.51)


@pytest.mark.slow
def test_run_folder_resume_and_reload(tmp_path):
    cfg = RetrainConfig(arch="darts_v2", channels=2, layers=1, queries=1, inner_steps=1, iterations=4,
                        val_every=2, val_tasks=2, checkpoint_every=2, threads=1)
    whole = retrain(None, cfg, out=tmp_path / "whole", progress=False)
    half = retrain(None, RetrainConfig(**{**cfg.to_dict(), "iterations": 2}), out=tmp_path / "half", progress=False)
    assert half.rows[-1]["iteration"] == 2
    resumed = retrain(resume=tmp_path / "half", config=RetrainConfig(iterations=4), progress=False)
    for (name, a), b in zip(whole.net.state_dict().items(), resumed.net.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    saved = json.load(open(tmp_path / "half" / "config.json"))
    assert saved["arch"] == "darts_v2" and saved["iterations"] == 4 and saved["inner_steps"] == 1
    rows = (tmp_path / "half" / "metrics.csv").read_text().splitlines()
    assert rows[0].startswith("iteration,loss,acc") and len(rows) == 5
    cfg2, net, _ = load_retrain(tmp_path / "half", which="last")
    assert cfg2.arch == "darts_v2"
    for a, b in zip(net.state_dict().values(), resumed.net.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    with pytest.raises(RunError, match="another architecture"):
        retrain("conv4", resume=tmp_path / "half", progress=False)
    with pytest.raises(RunError, match="already holds a run"):
        retrain(None, cfg, out=tmp_path / "whole", progress=False)


def test_architectures_and_config_errors(tmp_path):
    assert arch_config("DARTS_V2") == "darts_v2" and arch_config(" conv4") == "conv4"
    assert arch_config(DARTS_V2) == genotype_to_dict(DARTS_V2)
    save_genotype(DARTS_V2, tmp_path / "genotype.json")
    assert arch_config(tmp_path) == genotype_to_dict(DARTS_V2)
    assert arch_config(tmp_path / "genotype.json") == genotype_to_dict(DARTS_V2)
    with pytest.raises(GenotypeError, match="known architecture"):
        arch_config("resnet50")
    (tmp_path / "bad.json").write_text('{"normal": [["sep_conv_3x3", 9]]}')
    with pytest.raises(GenotypeError, match="bad.json"):
        arch_config(tmp_path / "bad.json")
    (tmp_path / "empty").mkdir()
    with pytest.raises(GenotypeError, match="no genotype.json"):
        arch_config(tmp_path / "empty")
    with pytest.raises(ConfigError, match="inner_steps"):
        RetrainConfig(inner_steps=-1).validate()
    with pytest.raises(ConfigError, match="ways"):
        RetrainConfig(ways=1).validate()


RETRAIN_TINY = dict(arch="conv4", channels=2, iterations=1, ways=2, queries=2, inner_steps=1, val_every=1,
                    val_tasks=1, checkpoint_every=1, threads=1)


@pytest.mark.parametrize("which, given, expected", [("mini", None, False), ("omniglot", None, True),
                                                    ("mini", True, True), ("omniglot", False, False)])
def test_retrain_rotations_default_on_for_omniglot_only_and_config_json_says_so(which, given, expected, tmp_path,
                                                                                monkeypatch):
    import bayesnas.training.loop as maml  # where fit and retrain build their samplers

    path = mini_imagenet_file(tmp_path, side=16) if which == "mini" else None  # None: the embedded Omniglot
    built = []
    real_sampler = maml.TaskSampler

    def spy(split, *args, **kwargs):
        built.append((split.name, kwargs.get("rotations", False)))
        return real_sampler(split, *args, **kwargs)

    monkeypatch.setattr(maml, "TaskSampler", spy)
    settings = dict(RETRAIN_TINY, data=path) if given is None else dict(RETRAIN_TINY, data=path, rotations=given)
    retrain(None, RetrainConfig(**settings), out=tmp_path / "run", progress=False)
    assert built == [("train", expected), ("val", False)]
    assert json.load(open(tmp_path / "run" / "config.json"))["rotations"] is expected


def test_retrain_without_a_val_split_refuses_unless_told_to_select_on_test(tmp_path):
    path = write_fewshot_file(tmp_path / "noval.h5", "Omniglot (no validation classes)", {"train": 4, "test": 3},
                              side=16, channels=1)
    with pytest.raises(DataError, match=r"noval\.h5: has no 'val' split .*--select-on test"):
        retrain(None, RetrainConfig(**dict(RETRAIN_TINY, data=path)), out=tmp_path / "refused", progress=False)
    assert not (tmp_path / "refused").exists()
    result = retrain(None, RetrainConfig(**dict(RETRAIN_TINY, data=path, select_on="test")), out=tmp_path / "run",
                     progress=False)
    assert result.rows[-1]["val_acc"] is not None
    assert json.load(open(tmp_path / "run" / "config.json"))["select_on"] == "test"
    with pytest.raises(ConfigError, match="select_on='all'"):
        RetrainConfig(select_on="all").validate()
