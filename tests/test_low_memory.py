"""The memory-bounded mode (--low-memory): checkpointed inner steps and one task at a time
give the same values and gradients as the default path, with memory that no longer grows
with the number of inner steps."""
from types import SimpleNamespace

import pytest
import torch

from bayesnas.config import FitConfig, RetrainConfig
from bayesnas.data import load_default
from bayesnas.inference.adapt import adapt
from bayesnas.inference.model import task_share
from bayesnas.inference.unroll import unrolled_steps
from bayesnas.training.loop import task_samplers
from bayesnas.training.retrain import build_retrain_network, maml_step
from bayesnas.training.search import build_meta_network, make_optimiser, svi_step


def test_checkpointed_steps_give_the_same_values_and_second_order_gradients():
    torch.manual_seed(0)
    x = torch.randn(7, 4, dtype=torch.float64)
    w0 = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    shift = torch.randn(3, dtype=torch.float64, requires_grad=True)  # reached only through the closure
    lr = torch.tensor(0.3, dtype=torch.float64, requires_grad=True)

    def objective(p, step):
        noise = torch.randn(3, dtype=torch.float64)  # random state must be replayed on recompute
        return torch.tanh(x @ p["w"] + shift + 0.1 * noise).pow(2).sum()

    results = []
    for checkpoint in (False, True):
        torch.manual_seed(1)
        fast = unrolled_steps(objective, {"w": w0}, steps=3, lr=lr, checkpoint=checkpoint)
        outer = fast["w"].sin().sum()
        results.append((outer.detach(), torch.autograd.grad(outer, [w0, shift, lr])))
    (v0, g0), (v1, g1) = results
    assert torch.equal(v0, v1)
    for a, b in zip(g0, g1, strict=True):
        assert torch.allclose(a, b, rtol=1e-10, atol=1e-12)
    assert g0[1].abs().sum() > 0 and g0[2].abs() > 0  # the closure and the step size do get gradients


def _saved_bytes(fn):
    """Bytes of the tensors autograd keeps for backward while ``fn`` runs (outside checkpoints)."""
    total = [0]

    def pack(t):
        total[0] += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return total[0]


@pytest.mark.slow
def test_checkpointed_guide_memory_does_not_grow_with_inner_steps():
    cfg = FitConfig(channels=2, cells=2, ways=3, shots=1, queries=2, first_order=False)
    sampler, _ = task_samplers(cfg, load_default(), torch.device("cpu"))
    batch = sampler.batch([0])
    torch.manual_seed(0)
    meta = build_meta_network(cfg, 1)

    def guide_bytes(steps, checkpoint):
        return _saved_bytes(lambda: adapt(meta, batch.support_x, batch.support_y, steps, 1.0, checkpoint=checkpoint))

    plain1, plain4 = guide_bytes(1, False), guide_bytes(4, False)
    ckpt1, ckpt4 = guide_bytes(1, True), guide_bytes(4, True)
    assert plain4 > 3 * plain1            # the default keeps every step's graph: linear in N
    assert ckpt4 < 0.1 * plain4           # checkpointed: only the steps' inputs
    assert ckpt4 < 4 * ckpt1 + 1e6


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["gumbel", "softmax"])
def test_low_memory_svi_step_equals_the_default_step(variant):
    # batch_tasks off: one call and one backward per task on both sides, so the only
    # difference is the recomputation of the inner steps (batching itself: test_models_supernet)
    cfg = FitConfig(channels=1, cells=2, inner_steps=2, tasks=3, ways=3, queries=2, variant=variant, batch_tasks=False,
                    first_order=False)
    sampler, _ = task_samplers(cfg, load_default(), torch.device("cpu"))
    batch = sampler.batch([0, 1, 2])
    out = {}
    for low in (False, True):
        cfg.low_memory = low
        torch.manual_seed(0)
        meta = build_meta_network(cfg, 1)
        opt = make_optimiser(meta, cfg)
        with task_share(4, 1, 4):  # as rank 1 of a job with a 4-task meta-batch: ranks see tasks 1..3
            row = svi_step(meta, opt, batch, cfg, 1)
        out[low] = (row, torch.cat([p.detach().reshape(-1) for p in meta.meta_parameters()]), torch.rand(3))
    (row0, params0, rng0), (row1, params1, rng1) = out[False], out[True]
    for key in ("loss", "loglik", "kl_theta", "kl_z", "acc"):
        assert row1[key] == pytest.approx(row0[key], rel=1e-5, abs=1e-6), key
    assert torch.allclose(params0, params1, atol=1e-6)   # after one Adam step on each gradient
    assert torch.equal(rng0, rng1)                        # the random stream continues identically


def test_low_memory_maml_step_equals_the_default_step():
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    batch = SimpleNamespace(support_x=torch.rand(3, 6, 1, 16, 16, generator=g),
                            support_y=torch.tensor([[0, 0, 1, 1, 2, 2]] * 3),
                            query_x=torch.rand(3, 6, 1, 16, 16, generator=g),
                            query_y=torch.tensor([[0, 1, 2, 0, 1, 2]] * 3))
    grads = {}
    for low in (False, True):
        cfg = RetrainConfig(arch="conv4", ways=3, channels=4, inner_steps=3, low_memory=low, grad_clip=0)
        torch.manual_seed(0)
        net = build_retrain_network(cfg, in_channels=1, image_size=16)
        opt = torch.optim.SGD(net.parameters(), lr=0.0)
        row = maml_step(net, opt, batch, cfg)
        grads[low] = (row, torch.cat([p.grad.reshape(-1) for p in net.parameters()]))
    assert grads[True][0]["loss"] == pytest.approx(grads[False][0]["loss"], rel=1e-6)
    assert grads[True][0]["acc"] == pytest.approx(grads[False][0]["acc"])
    assert torch.allclose(grads[True][1], grads[False][1], rtol=1e-4, atol=1e-6)
    assert grads[False][1].abs().sum() > 0
