"""The search searches: on a task family whose best operation is known, alpha finds it."""
from types import SimpleNamespace

import pytest
import torch

from bayesnas.config import FitConfig
from bayesnas.inference import MetaNetwork
from bayesnas.training.search import make_optimiser, svi_step
from tests.toy import ChannelSelectNet, channel_tasks


@pytest.mark.slow
@pytest.mark.parametrize("variant,iterations,min_acc", [("gumbel", 150, 0.55), ("softmax", 60, 0.7)])
def test_alpha_concentrates_on_the_op_that_carries_the_signal(variant, iterations, min_acc):
    torch.manual_seed(0)
    signal = 6  # sep_conv_7x7's slot: nothing special about it, only the data makes it best
    cfg = FitConfig(tasks=4, inner_steps=1, iterations=iterations, variant=variant, arch_lr=0.05, meta_lr=0.01,
                    inner_lr_mu=1.0, inner_lr_alpha=1.0, tau_start=1.0, tau_end=0.5,
                    kl_weight=1.0, first_order=False, arch_warmup=0, arch_schedule="constant")
    meta = MetaNetwork(ChannelSelectNet(), sigma_init=0.5,
                       inner_lr={"mu": cfg.inner_lr_mu, "rho": cfg.inner_lr_rho, "alpha": cfg.inner_lr_alpha})
    optimiser = make_optimiser(meta, cfg)
    g = torch.Generator().manual_seed(0)
    before = meta.alpha_normal.softmax(-1)[0, signal].item()
    accs = []
    for iteration in range(1, cfg.iterations + 1):
        sx, sy, qx, qy = channel_tasks(cfg.tasks, signal_channel=signal, generator=g)
        row = svi_step(meta, optimiser, SimpleNamespace(support_x=sx, support_y=sy, query_x=qx, query_y=qy),
                       cfg, iteration)
        accs.append(row["acc"])
    probs = meta.alpha_normal.softmax(-1)[0]
    others = torch.cat([probs[:signal], probs[signal + 1:]])
    assert probs.argmax().item() == signal
    assert probs[signal].item() > 1.8 * before
    assert probs[signal].item() > 1.2 * others.max().item()
    # and the adapted networks beat chance (0.5) on the query sets: 20 iterations x 40
    # points, so 0.55 is over 3 standard deviations above chance (one z sample each for
    # the Gumbel variant, hence its lower bar)
    assert sum(accs[-20:]) / 20 > min_acc
    # edges that no task uses get no likelihood gradient: whatever they do (a random walk
    # from the Monte-Carlo KL of the Gumbel variant), they end less sure than the used edge
    unused = meta.alpha_normal.softmax(-1)[1:]
    assert unused.max().item() < probs[signal].item()
