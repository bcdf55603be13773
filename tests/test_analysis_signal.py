"""Gradient signal against a sign-flip null, and alpha's meta-gradients from a fit run."""
import numpy as np
import pytest

from bayesnas.analysis.signal import arch_gradients, gradient_signal


def test_pure_noise_is_at_the_null_and_a_consistent_direction_is_far_above_it():
    rng = np.random.default_rng(0)
    noise = rng.standard_t(3, size=(24, 280))  # heavy-tailed, mean 0
    s = gradient_signal(noise, flips=300)
    assert s.batches == 24 and s.coords == 280
    assert abs(s.frac_t2 - s.null_frac_t2) < 0.04 and s.split_half < s.null_split_half_q95 + 0.1
    direction = np.where(np.arange(280) % 2 == 0, 1.0, -1.0)
    signal = gradient_signal(noise + direction, flips=300)
    assert signal.frac_t2 > 0.5 > signal.null_frac_t2_q95
    assert signal.split_half > 0.5 > signal.null_split_half_q95
    # the mean over 24 batches of a unit direction on 280 coordinates has norm about sqrt(280) = 16.7
    assert signal.mean_norm > 2 * s.mean_norm
    with pytest.raises(ValueError, match="batches >= 4"):
        gradient_signal(noise[:3])


@pytest.fixture
def fit_run(tiny_fit_run):
    return tiny_fit_run


def test_arch_gradients_are_per_batch_reproducible_and_differ_by_estimator(fit_run):
    g = arch_gradients(fit_run, batches=4)
    assert g.shape == (4, 280) and np.isfinite(g).all() and np.abs(g).max() > 0
    assert np.array_equal(g, arch_gradients(fit_run, batches=4))
    soft = arch_gradients(fit_run, batches=4, variant="softmax")
    assert soft.shape == (4, 280) and not np.allclose(soft, g)


def test_arch_gradients_under_the_estimator_settings_draw_z_as_they_say(fit_run, monkeypatch):
    from bayesnas.analysis import signal
    from bayesnas.inference import EdgeSampling

    seen = []
    original = signal.adapt
    monkeypatch.setattr(signal, "adapt", lambda meta, *a, **k: seen.append(meta.sampling) or original(meta, *a, **k))
    settings = dict(z_per_example=True, straight_through=True, inner_tau_end=0.05, prune_below=0.01)
    g = arch_gradients(fit_run, batches=4, **settings)
    assert seen == [EdgeSampling(True, True, 0.05, 0.01)] * 4
    assert g.shape == (4, 280) and np.isfinite(g).all() and not np.allclose(g, arch_gradients(fit_run, batches=4))
