"""The edge KL's two forms and what they send to the meta-parameters in first and second order.

The relaxed categorical is a location family in logit space: with first-order inner steps
(phi = alpha + delta, delta detached) the Monte-Carlo relaxed KL does not depend on alpha,
and the analytic Gaussian KL does not depend on mu. The closed-form categorical KL does.
"""
import pytest
import torch
from torch.distributions import Categorical, kl_divergence

from bayesnas import config
from bayesnas.inference import elbo_terms
from bayesnas.inference.adapt import adapt
from bayesnas.inference.elbo import EDGE_KLS, categorical_edge_kl
from tests.toy import make_meta, toy_batch


def test_edge_kl_choices_are_one_list():
    assert config.EDGE_KLS == EDGE_KLS


def test_categorical_edge_kl_matches_torch_and_is_zero_at_the_prior():
    g = torch.Generator().manual_seed(0)
    phi, alpha = torch.randn(3, 14, 10, generator=g), torch.randn(14, 10, generator=g)
    ours = categorical_edge_kl(phi, alpha)
    reference = kl_divergence(Categorical(logits=phi), Categorical(logits=alpha.expand(3, 14, 10))).sum(-1)
    assert ours.shape == (3,)
    torch.testing.assert_close(ours, reference)
    assert (ours > 0).all()
    # a shift of all of an edge's logits changes nothing: softmax is shift-invariant per edge
    torch.testing.assert_close(categorical_edge_kl(alpha[None] + 3.0, alpha), torch.zeros(1), atol=1e-6, rtol=0)


def test_categorical_kl_gradient_in_alpha_is_the_pull_toward_the_posterior():
    g = torch.Generator().manual_seed(1)
    phi = torch.randn(2, 14, 10, generator=g, dtype=torch.float64)
    alpha = torch.randn(14, 10, generator=g, dtype=torch.float64, requires_grad=True)
    categorical_edge_kl(phi, alpha).sum().backward()
    expected = (alpha.softmax(-1) - phi.softmax(-1)).sum(0)
    torch.testing.assert_close(alpha.grad, expected.detach())


def _first_order_kl_gradients(edge_kl, dtype=torch.float64):
    """Gradients of the query KL terms alone w.r.t. alpha and mu, after first-order inner steps."""
    meta = make_meta(dtype)
    with torch.no_grad():
        meta.alpha_normal.normal_(0, 0.5)
        meta.alpha_reduce.normal_(0, 0.5)
    sx, sy, qx, qy = toy_batch(dtype=dtype)
    torch.manual_seed(5)
    q = adapt(meta, sx, sy, steps=2, tau=0.7, kl_weight=1.0, first_order=True, edge_kl=edge_kl)
    terms = elbo_terms(meta, qx, qy, q, tau=0.7, edge_kl=edge_kl)
    grads = torch.autograd.grad(terms.kl_z.sum(), [meta.alpha_normal], allow_unused=True)
    mu_grad = torch.autograd.grad(terms.kl_theta.sum(), [meta.mu])[0]
    return q, grads[0], mu_grad, terms


def test_relaxed_kl_sends_no_first_order_gradient_to_alpha_and_the_gaussian_kl_none_to_mu():
    q, alpha_grad, mu_grad, terms = _first_order_kl_gradients("relaxed")
    # the task posteriors moved, so the KLs are not trivially zero
    assert (terms.kl_theta > 1e-8).all() and (terms.kl_z.abs() > 1e-6).all()
    assert alpha_grad.abs().max() < 1e-10
    assert mu_grad.abs().max() < 1e-10


def test_categorical_kl_sends_first_order_gradient_to_alpha_of_second_order_in_the_shift():
    _, alpha_grad, _, _ = _first_order_kl_gradients("categorical")
    _, relaxed_grad, _, _ = _first_order_kl_gradients("relaxed")
    assert alpha_grad.abs().max() > 1e4 * relaxed_grad.abs().max()
    # phi = alpha + delta with delta fixed: differentiate KL(softmax(alpha + delta) || softmax(alpha))
    torch.manual_seed(0)
    alpha = torch.randn(14, 10, dtype=torch.float64) * 0.5
    delta = torch.randn(2, 14, 10, dtype=torch.float64) * 0.3
    a = alpha.clone().requires_grad_(True)
    categorical_edge_kl(a + delta, a).sum().backward()
    eps, numeric = 1e-6, torch.zeros_like(alpha)
    for e in range(3):
        for o in range(10):
            bump = torch.zeros_like(alpha)
            bump[e, o] = eps
            f = lambda x: categorical_edge_kl(x + delta, x).sum()  # noqa: E731
            numeric[e, o] = (f(alpha + bump) - f(alpha - bump)) / (2 * eps)
    torch.testing.assert_close(a.grad[:3], numeric[:3], rtol=1e-5, atol=1e-8)
    # through the identity path the first-order pull (softmax(alpha) - softmax(phi), linear in delta)
    # cancels: what remains is quadratic in delta (halving the shift quarters the gradient)
    half = alpha.clone().requires_grad_(True)
    categorical_edge_kl(half + delta / 2, half).sum().backward()
    ratio = a.grad.norm() / half.grad.norm()
    assert 3.8 < ratio < 4.2


def test_second_order_steps_do_send_kl_gradients_to_mu():
    meta = make_meta(torch.float64)
    sx, sy, qx, qy = toy_batch(dtype=torch.float64)
    torch.manual_seed(5)
    q = adapt(meta, sx, sy, steps=2, tau=0.7, kl_weight=1.0, first_order=False)
    terms = elbo_terms(meta, qx, qy, q, tau=0.7)
    mu_grad = torch.autograd.grad(terms.kl_theta.sum(), [meta.mu])[0]
    assert mu_grad.abs().max() > 1e-8


@pytest.mark.parametrize("variant", ["gumbel", "softmax"])
def test_categorical_kl_is_what_elbo_terms_reports(variant):
    meta = make_meta()
    sx, sy, qx, qy = toy_batch()
    relaxed = variant == "gumbel"
    q = adapt(meta, sx, sy, steps=2, tau=1.0, relaxed=relaxed, edge_kl="categorical")
    terms = elbo_terms(meta, qx, qy, q, tau=1.0, relaxed=relaxed, edge_kl="categorical")
    expected = categorical_edge_kl(q.phi_normal, meta.alpha_normal) + categorical_edge_kl(q.phi_reduce,
                                                                                          meta.alpha_reduce)
    torch.testing.assert_close(terms.kl_z, expected)
    assert (terms.kl_z > 0).all()
    with pytest.raises(ValueError, match="edge_kl='mc'"):
        elbo_terms(meta, qx, qy, q, tau=1.0, edge_kl="mc")


def test_fixed_edge_weights_adapt_only_the_weights():
    meta = make_meta()
    sx, sy, qx, qy = toy_batch()
    z = torch.zeros(2, 14, 10)
    z[:, :, 4] = 1.0  # the toy's signal channel on every edge
    q = adapt(meta, sx, sy, steps=2, tau=1.0, edge_weights=(z, z))
    torch.testing.assert_close(q.phi_normal, meta.alpha_normal.expand(2, 14, 10))
    assert not torch.equal(q.mu, meta.mu.expand_as(q.mu))
    terms = elbo_terms(meta, qx, qy, q, tau=1.0, edge_weights=(z, z), edge_kl="categorical")
    assert torch.equal(terms.kl_z, torch.zeros(2))
