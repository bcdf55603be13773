"""The model, the guide and the ELBO of BASE: KL terms, second-order meta-gradients."""
import pyro
import pytest
import torch
from pyro.infer import TraceMeanField_ELBO

from bayesnas.inference import base_guide, base_model, elbo_terms, prior_posterior
from bayesnas.inference.adapt import adapt
from bayesnas.inference.model import ExpRelaxedCategorical
from tests.toy import make_meta, toy_batch


def test_zero_inner_steps_gives_the_prior_and_exactly_zero_theta_kl():
    meta = make_meta()
    sx, sy, qx, qy = toy_batch()
    q = adapt(meta, sx, sy, steps=0, tau=1.0)
    terms = elbo_terms(meta, qx, qy, q, tau=1.0)
    assert terms.kl_theta.shape == (2,)
    assert torch.equal(terms.kl_theta, torch.zeros(2))
    # same logits for q and p: the MC estimate of the z KL is exactly zero too
    assert torch.allclose(terms.kl_z, torch.zeros(2), atol=1e-4)


def test_theta_kl_matches_the_closed_form():
    meta = make_meta()
    sx, sy, qx, qy = toy_batch()
    q = adapt(meta, sx, sy, steps=2, tau=1.0)
    terms = elbo_terms(meta, qx, qy, q, tau=1.0)
    s_q, s_p = q.sigma, meta.sigma
    closed = (torch.log(s_p / s_q) + (s_q**2 + (q.mu - meta.mu) ** 2) / (2 * s_p**2) - 0.5).sum(-1)
    assert (closed > 0).all()
    torch.testing.assert_close(terms.kl_theta, closed, rtol=1e-4, atol=1e-6)


def test_z_kl_estimate_agrees_with_monte_carlo():
    torch.manual_seed(3)
    p = ExpRelaxedCategorical(torch.tensor(0.7), logits=torch.randn(14, 10)).to_event(1)
    q = ExpRelaxedCategorical(torch.tensor(0.7), logits=torch.randn(14, 10)).to_event(1)
    # our estimator: one-sample log q - log p, averaged over many draws
    meta = make_meta()
    meta.alpha_normal.data.copy_(p.base_dist.logits)
    q_post = prior_posterior(meta, 4000)._replace(phi_normal=q.base_dist.logits.expand(4000, 14, 10))
    trace = pyro.poutine.trace(base_guide).get_trace(meta, None, None, 0.7, q_post)
    z = trace.nodes["log_z_normal"]["value"]
    ours = (trace.nodes["log_z_normal"]["fn"].log_prob(z) - p.log_prob(z)).mean()
    sample = q.sample((4000,))
    reference = (q.log_prob(sample) - p.log_prob(sample)).mean()
    # KL is positive, and two independent MC estimates agree within their noise
    assert ours > 0
    assert abs(ours - reference) < 0.15 * abs(reference) + 0.5


def test_elbo_terms_equal_pyro_trace_mean_field_elbo():
    meta = make_meta()
    sx, sy, qx, qy = toy_batch()
    q = adapt(meta, sx, sy, steps=1, tau=0.8)
    q = type(q)(*(t.detach() for t in q))
    pyro.set_rng_seed(5)
    ours = elbo_terms(meta, qx, qy, q, tau=0.8).elbo().sum()
    pyro.set_rng_seed(5)
    theirs = -TraceMeanField_ELBO().differentiable_loss(
        lambda *a: base_model(meta, qx, qy, 0.8), lambda *a: base_guide(meta, qx, qy, 0.8, q))
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-4)


def test_softmax_variant_has_no_z_sites_and_no_z_kl():
    meta = make_meta()
    sx, sy, qx, qy = toy_batch()
    q = adapt(meta, sx, sy, steps=2, tau=1.0, relaxed=False)
    terms = elbo_terms(meta, qx, qy, q, tau=1.0, relaxed=False)
    assert torch.equal(terms.kl_z, torch.zeros(2))
    trace = pyro.poutine.trace(base_guide).get_trace(meta, qx, qy, 1.0, q, False)
    assert "log_z_normal" not in trace.nodes
    # the inner steps moved phi (softmax variant adapts the edge logits deterministically)
    assert not torch.allclose(q.phi_normal[0], meta.alpha_normal)


def outer_loss(meta, batch, first_order, seed=0):
    sx, sy, qx, qy = batch
    torch.manual_seed(seed)
    q = adapt(meta, sx, sy, steps=2, tau=1.0, first_order=first_order)
    return -elbo_terms(meta, qx, qy, q, tau=1.0).elbo().mean()


def test_meta_gradient_is_second_order_and_matches_finite_differences():
    meta = make_meta(torch.float64, inner_lr={"mu": 0.5, "rho": 0.1, "alpha": 1.0})
    batch = toy_batch(dtype=torch.float64)
    params = {"mu": meta.mu, "alpha_normal": meta.alpha_normal}
    loss = outer_loss(meta, batch, first_order=False)
    grads = dict(zip(params, torch.autograd.grad(loss, list(params.values())), strict=True))
    loss_fo = outer_loss(meta, batch, first_order=True)
    grads_fo = dict(zip(params, torch.autograd.grad(loss_fo, list(params.values())), strict=True))
    torch.testing.assert_close(loss, loss_fo)  # same forward value
    assert (grads["mu"] - grads_fo["mu"]).abs().max() > 1e-3 * grads["mu"].abs().max()

    eps = 1e-6
    for name, param in params.items():
        flat = param.data.view(-1)
        for index in [0, 7, flat.numel() - 1]:
            old = flat[index].item()
            flat[index] = old + eps
            up = outer_loss(meta, batch, False).item()
            flat[index] = old - eps
            down = outer_loss(meta, batch, False).item()
            flat[index] = old
            numeric = (up - down) / (2 * eps)
            assert grads[name].view(-1)[index].item() == pytest.approx(numeric, rel=1e-4, abs=1e-7), (name, index)


def test_relaxed_edge_prior_is_finite_at_low_temperature():
    alpha = torch.randn(14, 10)
    p = ExpRelaxedCategorical(torch.tensor(0.05), logits=alpha).to_event(1)
    log_z = p.rsample((2000,))
    assert torch.isfinite(p.log_prob(log_z)).all()
    assert torch.allclose(log_z.exp().sum(-1), torch.ones(2000, 14), atol=1e-4)


def test_inner_mean_steps_stay_stable_for_a_tight_prior():
    # sigma = 0.01: a plain step of 0.5 on the per-point support ELBO would have a KL
    # curvature of 1 / (20 * 1e-4) = 500 times the step: it would diverge at once
    meta = make_meta(sigma_init=0.01, inner_lr={"mu": 0.5, "rho": 0.1, "alpha": 1.0})
    sx, sy, qx, qy = toy_batch()
    kls = []
    for steps in (1, 4, 16):
        torch.manual_seed(0)
        q = adapt(meta, sx, sy, steps=steps, tau=1.0)
        kls.append(elbo_terms(meta, qx, qy, q, tau=1.0).kl_theta.mean().item())
    # the posterior mean settles where the likelihood balances the prior: bounded, not exploding
    assert all(k < 50 for k in kls), kls
    assert kls[2] < 2 * kls[1] + 1


def test_mean_step_size_is_the_proximal_step_of_the_quadratic_kl():
    from bayesnas.inference.adapt import mean_step_size

    sigma = torch.tensor([0.01, 0.1, 1.0])
    lr = mean_step_size(0.5, sigma, kl_weight=1.0, n_support=10)
    # one step from psi on f(m) = g*m - (m - mu)^2 / (2 n sigma^2) lands on the proximal point
    mu, psi, g = torch.zeros(3), torch.tensor([0.3, -0.2, 0.1]), torch.tensor([1.0, 2.0, -1.0])
    step = psi + lr * (g - (psi - mu) / (10 * sigma**2))
    prox = (psi / 0.5 + mu / (10 * sigma**2) + g) / (1 / 0.5 + 1 / (10 * sigma**2))
    torch.testing.assert_close(step, prox)
    assert lr[2] > lr[1] > lr[0]
