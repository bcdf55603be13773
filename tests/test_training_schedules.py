"""alpha's step-size schedule: no step during the warm-up, then constant or cosine-decayed."""
import math

import pytest
import torch

from bayesnas.config import FitConfig
from bayesnas.errors import ConfigError
from bayesnas.training import fit
from bayesnas.training.schedules import arch_lr_factor
from bayesnas.training.search import load_fit


def test_factor_is_zero_in_warmup_then_constant_or_a_half_cosine():
    constant = FitConfig(iterations=100, arch_warmup=10, arch_schedule="constant")
    assert [arch_lr_factor(constant, i) for i in (1, 10, 11, 100)] == [0.0, 0.0, 1.0, 1.0]
    cosine = FitConfig(iterations=100, arch_warmup=20, arch_schedule="cosine")
    assert arch_lr_factor(cosine, 20) == 0.0
    assert arch_lr_factor(cosine, 21) == pytest.approx(1.0)
    assert arch_lr_factor(cosine, 61) == pytest.approx(0.5)  # half way through the 80 after warm-up
    assert arch_lr_factor(cosine, 41) == pytest.approx(0.5 * (1 + math.cos(math.pi / 4)))
    assert arch_lr_factor(cosine, 100) == pytest.approx(0.5 * (1 + math.cos(math.pi * 79 / 80)))
    # an extended run keeps the architecture it ended with: past the schedule the factor is 0
    assert arch_lr_factor(cosine.extended(200), 150) == 0.0


def test_bad_schedule_settings_are_clear_errors():
    with pytest.raises(ConfigError, match="arch_schedule='linear'"):
        FitConfig(arch_schedule="linear").validate()
    with pytest.raises(ConfigError, match="arch_warmup=-1"):
        FitConfig(arch_warmup=-1).validate()


@pytest.mark.slow
def test_alpha_stays_at_its_initial_value_through_the_warmup_and_moves_after(tmp_path, small_omniglot):
    tiny = dict(data=small_omniglot, channels=2, cells=3, queries=2, inner_steps=1, val_every=4,
                checkpoint_every=4, val_tasks=2, val_samples=2, log_every=2, threads=1, arch_lr=0.1)
    fit(FitConfig(iterations=4, arch_warmup=4, **tiny), out=tmp_path / "warm", progress=False)
    fit(FitConfig(iterations=4, arch_warmup=0, arch_schedule="constant", **tiny), out=tmp_path / "none", progress=False)
    warm, none = load_fit(tmp_path / "warm")[1], load_fit(tmp_path / "none")[1]
    for alpha in (warm.alpha_normal, warm.alpha_reduce):  # the 1e-3 * randn initialisation, untouched
        assert alpha.detach().abs().max() < 0.01
    for alpha in (none.alpha_normal, none.alpha_reduce):  # four Adam steps of 0.1 move it
        assert alpha.detach().abs().max() > 0.05


def test_alpha_step_size_is_set_on_alphas_group_wherever_it_sits():
    from bayesnas.training.search import arch_group, build_meta_network, make_optimiser

    cfg = FitConfig(channels=2, cells=2, arch_lr=0.25, meta_lr=0.5)
    meta = build_meta_network(cfg, 1)
    shipped = make_optimiser(meta, cfg)
    assert arch_group(shipped, meta)["lr"] == 0.25 and shipped.param_groups[0]["lr"] == 0.5
    # a user's optimiser with alpha first: the group is found by identity, not position
    alpha = [meta.alpha_normal, meta.alpha_reduce]
    rest = [p for p in meta.meta_parameters() if all(p is not a for a in alpha)]
    custom = torch.optim.Adam([{"params": alpha, "lr": 0.1}, {"params": rest, "lr": 0.2}])
    assert arch_group(custom, meta) is custom.param_groups[0]
    with pytest.raises(ValueError, match="alpha_normal"):
        arch_group(torch.optim.Adam(rest), meta)
