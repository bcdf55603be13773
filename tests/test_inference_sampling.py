"""How the edge variables are drawn and used (EdgeSampling): one sample per image, straight-through,
within-task annealing and pruning, each against what it should equal, and the default unchanged."""
import importlib

import pyro.poutine as poutine
import pytest
import torch
import torch.nn.functional as F

from bayesnas.config import FitConfig
from bayesnas.data import load_default
from bayesnas.inference import EdgeSampling, base_guide, base_model, elbo_terms, predictive, prior_posterior
from bayesnas.inference.adapt import adapt
from bayesnas.inference.elbo import categorical_edge_kl
from bayesnas.inference.meta import straight_through
from bayesnas.inference.model import ExpRelaxedCategorical, edge_prior
from bayesnas.training import search
from bayesnas.training.loop import task_samplers
from bayesnas.training.search import build_meta_network, edge_sampling, make_optimiser, svi_step
from tests.toy import ToyBatch, make_meta, toy_batch

NUM_EDGES, NUM_OPS = 14, 10
#: the module (the package's ``adapt`` is the function)
ADAPT = importlib.import_module("bayesnas.inference.adapt")


def shifted_posterior(meta, num_tasks, seed=0, scale=1.0):
    """The guide's start with phi moved off alpha by a random shift (a posterior the KL sees)."""
    g = torch.Generator().manual_seed(seed)
    q = prior_posterior(meta, num_tasks)
    dtype = meta.mu.dtype
    return q._replace(phi_normal=q.phi_normal + scale * torch.randn(num_tasks, NUM_EDGES, NUM_OPS, generator=g,
                                                                    dtype=dtype),
                      phi_reduce=q.phi_reduce + scale * torch.randn(num_tasks, NUM_EDGES, NUM_OPS, generator=g,
                                                                    dtype=dtype))


def traces(meta, x, y, q, tau):
    """The guide's trace and the model's, replayed against it."""
    guide = poutine.trace(base_guide).get_trace(meta, x, y, tau, q)
    model = poutine.trace(poutine.replay(base_model, trace=guide)).get_trace(meta, x, y, tau)
    return guide, model


# one sample per image


def test_per_example_sites_have_an_image_dimension_and_the_kl_is_the_mean_of_the_images_estimates():
    meta = make_meta(torch.float64, sampling=EdgeSampling(per_example=True))
    _, _, qx, qy = toy_batch(dtype=torch.float64)
    T, B = qx.shape[:2]
    q = shifted_posterior(meta, T)
    torch.manual_seed(0)
    guide, model = traces(meta, qx, qy, q, 0.7)
    torch.manual_seed(0)
    terms = elbo_terms(meta, qx, qy, q, 0.7)
    kl = torch.zeros(T, dtype=torch.float64)
    for site, phi, alpha in (("log_z_normal", q.phi_normal, meta.alpha_normal),
                             ("log_z_reduce", q.phi_reduce, meta.alpha_reduce)):
        value = guide.nodes[site]["value"]
        assert value.shape == (T, B, NUM_EDGES, NUM_OPS)
        assert model.nodes[site]["fn"].event_shape == (B, NUM_EDGES, NUM_OPS)
        assert not torch.equal(value[:, 0], value[:, 1])  # each image its own draw
        temperature = torch.tensor(0.7, dtype=torch.float64)
        for b in range(B):  # one task-level estimate per image, by the plain relaxed categorical
            log_q = ExpRelaxedCategorical(temperature, logits=phi).to_event(1).log_prob(value[:, b])
            log_p = ExpRelaxedCategorical(temperature, logits=alpha).to_event(1).log_prob(value[:, b])
            kl = kl + (log_q - log_p) / B
    torch.testing.assert_close(terms.kl_z, kl, rtol=1e-10, atol=1e-10)


def test_per_example_kl_has_the_per_task_expectation_and_less_spread():
    """Many tasks with one posterior: the mean of the KL estimates per task agrees between the two
    samplings (not B times larger), and averaging B images' estimates shrinks their spread ~sqrt(B)."""
    T = 2000
    _, _, qx, qy = toy_batch(dtype=torch.float64)
    x, y = qx[:1].expand(T, *qx.shape[1:]), qy[:1].expand(T, -1)
    estimates = {}
    for per_example in (False, True):
        meta = make_meta(torch.float64, sampling=EdgeSampling(per_example=per_example))
        one = shifted_posterior(meta, 1, scale=0.5)
        q = one._replace(**{k: v.expand(T, *v.shape[1:]) for k, v in one._asdict().items()})
        torch.manual_seed(1)
        with torch.no_grad():
            estimates[per_example] = elbo_terms(meta, x, y, q, 0.7).kl_z
    task, image = estimates[False], estimates[True]
    se = (task.var() / T + image.var() / T).sqrt()
    assert task.mean() > 10 * se  # a KL well away from 0
    assert abs(image.mean() - task.mean()) < 4 * se
    ratio = (image.std() / task.std()).item()
    assert 0.2 < ratio < 0.45, ratio  # 1 / sqrt(10) = 0.32


def test_predictive_draws_one_z_per_image_and_straight_through_makes_it_one_hot():
    meta = make_meta(torch.float64, sampling=EdgeSampling(per_example=True, hard=True))
    _, _, qx, _ = toy_batch(dtype=torch.float64)
    q = shifted_posterior(meta, 2)
    seen = []
    forward = meta.forward_tasks
    meta.forward_tasks = lambda x, theta, zn, zr: seen.append((zn, zr)) or forward(x, theta, zn, zr)
    probs = predictive(meta, q, qx, 3, 0.5, True)
    assert probs.shape == (3, 2, 10, 2) and len(seen) == 3
    for z in (z for pair in seen for z in pair):
        assert z.shape == (2, 10, NUM_EDGES, NUM_OPS)
        assert torch.equal(z, F.one_hot(z.argmax(-1), NUM_OPS).to(z.dtype))
    assert not torch.equal(seen[0][0][:, 0], seen[0][0][:, 1]) or not torch.equal(seen[0][0][:, 0], seen[0][0][:, 2])


def test_per_example_svi_step_is_the_same_with_tasks_batched_or_one_at_a_time():
    """The supernet's per-image path through the MetaNetwork: T tasks in one call, or one call and one
    backward per task (each task's own slice of the meta-batch's noise), agree in values and meta-gradients."""
    batch = None
    out = {}
    for batched in (True, False):
        cfg = FitConfig(channels=1, cells=2, inner_steps=1, tasks=2, ways=3, queries=2, image_size=14,
                        z_per_example=True, straight_through=True, batch_tasks=batched, arch_warmup=0)
        if batch is None:
            batch = task_samplers(cfg, load_default(), torch.device("cpu"))[0].batch([0, 1])
        torch.manual_seed(0)
        meta = build_meta_network(cfg, 1)
        row = svi_step(meta, make_optimiser(meta, cfg), batch, cfg, 1)
        out[batched] = row, torch.cat([p.grad.reshape(-1) for p in meta.meta_parameters() if p.grad is not None])
    (row0, grad0), (row1, grad1) = out[True], out[False]
    for key in ("loss", "loglik", "kl_theta", "kl_z", "acc"):
        assert row1[key] == pytest.approx(row0[key], rel=1e-4, abs=1e-6), key
    assert grad0.abs().max() > 0 and torch.allclose(grad0, grad1, rtol=1e-3, atol=1e-5 * grad0.abs().max().item())


# straight-through


def test_straight_through_is_one_hot_forward_and_identity_backward():
    z = torch.tensor([[0.2, 0.5, 0.3], [0.6, 0.1, 0.3]], dtype=torch.float64, requires_grad=True)
    hard = straight_through(z)
    assert torch.equal(hard, torch.tensor([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0]], dtype=torch.float64))
    weights = torch.arange(6.0, dtype=torch.float64).view(2, 3)
    (hard * weights).sum().backward()
    assert torch.equal(z.grad, weights)


def test_gumbel_straight_through_runs_the_network_on_the_one_hot_and_differentiates_the_relaxed_sample():
    meta = make_meta(torch.float64, sampling=EdgeSampling(hard=True))
    _, _, qx, qy = toy_batch(dtype=torch.float64)
    q = shifted_posterior(meta, 2)
    phi = q.phi_normal.detach().requires_grad_()
    q = q._replace(phi_normal=phi)
    torch.manual_seed(3)
    guide, model = traces(meta, qx, qy, q, 0.5)
    logits = model.nodes["_RETURN"]["value"]
    theta = guide.nodes["theta"]["value"].detach()
    relaxed = [guide.nodes[site]["value"].exp() for site in ("log_z_normal", "log_z_reduce")]
    one_hot = [F.one_hot(z.argmax(-1), NUM_OPS).to(z.dtype).requires_grad_() for z in relaxed]
    expected = meta.forward_tasks(qx, theta, *one_hot)
    assert torch.equal(logits, expected)
    # the gradient: the network's gradient at the one-hot point, pulled back through the relaxed sample
    loss = F.cross_entropy(logits.flatten(0, 1), qy.flatten())
    grad, = torch.autograd.grad(loss, phi, retain_graph=True)
    at_one_hot = torch.autograd.grad(F.cross_entropy(expected.flatten(0, 1), qy.flatten()), one_hot)
    pulled_back, = torch.autograd.grad(relaxed, phi, at_one_hot)
    assert grad.abs().max() > 0
    torch.testing.assert_close(grad, pulled_back, rtol=1e-10, atol=1e-12)


def test_softmax_straight_through_runs_the_argmax_and_differentiates_the_softmax():
    hard_meta = make_meta(torch.float64, sampling=EdgeSampling(hard=True))
    plain_meta = make_meta(torch.float64)
    _, _, qx, qy = toy_batch(dtype=torch.float64)
    q = shifted_posterior(hard_meta, 2)
    phi = q.phi_normal.detach().requires_grad_()
    q = q._replace(phi_normal=phi)
    torch.manual_seed(4)
    terms = elbo_terms(hard_meta, qx, qy, q, 1.0, relaxed=False)
    one_hot = [F.one_hot(p.argmax(-1), NUM_OPS).to(p.dtype).requires_grad_() for p in (phi, q.phi_reduce)]
    torch.manual_seed(4)  # the same draw of theta
    fixed = elbo_terms(plain_meta, qx, qy, q, 1.0, edge_weights=tuple(one_hot))
    assert torch.equal(terms.logits, fixed.logits)
    grad, = torch.autograd.grad(terms.loglik.sum(), phi)
    at_one_hot = torch.autograd.grad(fixed.loglik.sum(), one_hot)
    pulled_back, = torch.autograd.grad(phi.softmax(-1), phi, at_one_hot[0])
    assert grad.abs().max() > 0
    torch.testing.assert_close(grad, pulled_back, rtol=1e-10, atol=1e-12)


# within-task annealing


def test_inner_temperatures_fall_geometrically_from_tau_and_the_query_takes_the_end():
    annealed = EdgeSampling(inner_tau_end=0.05)
    assert [annealed.inner_tau(1.0, k, 4) for k in range(4)] == pytest.approx([1.0, 0.05**0.25, 0.05**0.5,
                                                                               0.05**0.75], rel=1e-12)
    assert annealed.inner_tau(0.3, 0, 4) == 0.3 and annealed.query_tau(0.3) == 0.05
    plain = EdgeSampling()
    assert [plain.inner_tau(0.7, k, 4) for k in range(4)] == [0.7] * 4 and plain.query_tau(0.7) == 0.7


def recorder(module, name, seen, monkeypatch):
    """Replace ``module.name`` by a wrapper that appends its temperature (5th argument) to ``seen[name]``."""
    original = getattr(module, name)

    def record(*args, **kwargs):
        seen.setdefault(name, []).append(args[4])
        return original(*args, **kwargs)

    monkeypatch.setattr(module, name, record)


def test_adapt_runs_each_inner_step_at_its_temperature(monkeypatch):
    meta = make_meta(sampling=EdgeSampling(inner_tau_end=0.1))
    sx, sy, _, _ = toy_batch()
    seen = {}
    recorder(ADAPT, "elbo_terms", seen, monkeypatch)
    adapt(meta, sx, sy, steps=3, tau=0.8)
    assert seen["elbo_terms"] == pytest.approx([0.8, 0.8 * (0.1 / 0.8) ** (1 / 3), 0.8 * (0.1 / 0.8) ** (2 / 3)],
                                               rel=1e-12)


def test_annealing_to_the_same_temperature_changes_nothing():
    sx, sy, _, _ = toy_batch()
    results = []
    for sampling in (EdgeSampling(), EdgeSampling(inner_tau_end=0.6)):
        meta = make_meta(sampling=sampling)
        torch.manual_seed(2)
        results.append(adapt(meta, sx, sy, steps=3, tau=0.6))
    for a, b in zip(*results, strict=True):
        assert torch.equal(a, b)


class ToySampler:
    """A task sampler of seeded toy meta-batches (``batch(indices)``), for evaluate_tasks."""

    def batch(self, indices):
        return ToyBatch(*toy_batch(len(indices)))


def test_training_and_validation_take_the_query_elbo_and_predictions_at_the_query_temperature(monkeypatch):
    cfg = FitConfig(inner_steps=2, tau_start=0.8, tau_end=0.8, inner_tau_end=0.2, arch_warmup=0, val_samples=1)
    meta = make_meta(sampling=edge_sampling(cfg))
    seen = {}
    for name in ("adapt", "adapt_held_out", "elbo_terms", "predictive"):
        recorder(search, name, seen, monkeypatch)
    svi_step(meta, make_optimiser(meta, cfg), ToyBatch(*toy_batch()), cfg, iteration=1)
    assert seen == {"adapt": [0.8], "elbo_terms": [0.2]}  # the guide starts at the iteration's tau
    search.evaluate_tasks(meta, cfg, ToySampler(), 2, 0.8, seed=0)
    assert seen == {"adapt": [0.8], "adapt_held_out": [0.8], "elbo_terms": [0.2, 0.2], "predictive": [0.2]}


# pruning


def pruned_meta(floor, dtype=torch.float32):
    """A toy meta-network whose edge probabilities spread over several orders of magnitude."""
    meta = make_meta(dtype, sampling=EdgeSampling(prune_below=floor))
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        meta.alpha_normal.copy_(3 * torch.randn(NUM_EDGES, NUM_OPS, generator=g))
        meta.alpha_reduce.copy_(3 * torch.randn(NUM_EDGES, NUM_OPS, generator=g))
    return meta


def test_pruned_ops_have_no_probability_in_the_prior_and_none_after_the_inner_steps():
    meta = pruned_meta(0.01)
    pruned = meta.pruned()
    probs = torch.stack([meta.alpha_normal, meta.alpha_reduce]).detach().softmax(-1)
    assert pruned.shape == (2, NUM_EDGES, NUM_OPS) and 20 < int(pruned.sum()) < 200
    assert torch.equal(pruned, (probs < 0.01) & (probs < probs.amax(-1, keepdim=True)))
    prior = torch.stack(meta.prior_logits()).softmax(-1)
    assert (prior[pruned] < 1e-6).all()
    torch.testing.assert_close(prior[~pruned], (probs / (probs * ~pruned).sum(-1, keepdim=True))[~pruned])
    sx, sy, qx, qy = toy_batch()
    for relaxed, edge_kl in ((True, "relaxed"), (True, "categorical"), (False, "categorical")):
        torch.manual_seed(0)
        q = adapt(meta, sx, sy, steps=3, tau=0.05, relaxed=relaxed, edge_kl=edge_kl)
        posterior = torch.stack([q.phi_normal, q.phi_reduce], 1).softmax(-1)  # [T, 2, 14, 10]
        assert (posterior[:, pruned] < 1e-6).all()
        assert (posterior[:, ~pruned] > 0).all()


def test_an_edge_keeps_its_most_probable_op_whatever_the_floor():
    meta = pruned_meta(0.5)  # above every op of most edges
    kept = ~meta.pruned()
    alpha = torch.stack([meta.alpha_normal, meta.alpha_reduce]).detach()
    assert kept.any(-1).all()
    assert kept.gather(-1, alpha.argmax(-1, keepdim=True)).all()
    assert (kept.sum(-1) == 1).sum() > 20


def test_no_floor_is_alpha_itself():
    meta = pruned_meta(0.0)
    assert not meta.pruned().any()
    normal, reduce = meta.prior_logits()
    assert normal is meta.alpha_normal and reduce is meta.alpha_reduce


def test_pruned_kl_terms_stay_finite_in_float32_at_low_temperature_and_alpha_gets_no_gradient_there():
    meta = pruned_meta(0.01)
    pruned = meta.pruned()
    sx, sy, qx, qy = toy_batch()
    for edge_kl in ("relaxed", "categorical"):
        torch.manual_seed(1)
        q = adapt(meta, sx, sy, steps=2, tau=0.05, kl_weight=1.0, edge_kl=edge_kl)
        terms = elbo_terms(meta, qx, qy, q, 0.05, edge_kl=edge_kl)
        assert torch.isfinite(terms.elbo()).all() and torch.isfinite(terms.kl_z).all()
        grads = torch.autograd.grad(-terms.elbo().sum(), [meta.alpha_normal, meta.alpha_reduce])
        grads = torch.stack(grads)
        assert torch.isfinite(grads).all() and grads[~pruned].abs().max() > 0
        assert torch.equal(grads[pruned], torch.zeros_like(grads[pruned]))
    # the prior's log density at its own sample, and the closed-form KL from the prior to itself
    alpha_normal, _ = meta.prior_logits()
    prior = edge_prior(alpha_normal, 0.05, 3)
    assert torch.isfinite(prior.log_prob(prior.rsample())).all()
    assert torch.isfinite(categorical_edge_kl(alpha_normal[None], alpha_normal)).all()


# the default is today's search


def svi_rows(sampling_cfg, steps=2):
    cfg = FitConfig(inner_steps=2, tau_start=0.5, tau_end=0.5, arch_warmup=0, **sampling_cfg)
    meta = make_meta(sampling=edge_sampling(cfg))
    optimiser = make_optimiser(meta, cfg)
    torch.manual_seed(0)
    rows = [svi_step(meta, optimiser, ToyBatch(*toy_batch()), cfg, iteration=i) for i in range(1, steps + 1)]
    return rows, [p.detach().clone() for p in meta.meta_parameters()]


@pytest.mark.parametrize("neutral", [{"inner_tau_end": 0.5}, {"prune_below": 1e-30}], ids=["anneal-to-tau", "floor"])
def test_settings_that_change_nothing_give_bit_identical_svi_steps(neutral):
    default_rows, default_params = svi_rows({})
    rows, params = svi_rows(neutral)
    assert rows == default_rows
    for a, b in zip(params, default_params, strict=True):
        assert torch.equal(a, b)


def test_the_default_sampling_is_one_relaxed_z_per_task():
    assert make_meta().sampling == EdgeSampling() == edge_sampling(FitConfig())
    assert EdgeSampling() == (False, False, None, 0.0)
    assert edge_sampling(FitConfig(z_per_example=True, straight_through=True, inner_tau_end=0.05,
                                   prune_below=0.01)) == EdgeSampling(True, True, 0.05, 0.01)
