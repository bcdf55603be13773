"""The schedules of a search, as functions of the FitConfig and the 1-based iteration.

Validation, inspection and task-adapted derivation use the schedule's values at the
checkpoint's iteration, so a task adapted after training takes the steps it took in training.
"""
import math


def temperature(cfg, iteration):
    """tau at ``iteration`` (1-based): exponential decay from tau_start to tau_end over
    ``cfg.schedule_iterations`` (default: the run's iterations), then tau_end."""
    span = cfg.schedule_span
    frac = min(iteration - 1, span - 1) / max(span - 1, 1)
    return cfg.tau_start * (cfg.tau_end / cfg.tau_start) ** frac


def kl_weight(cfg, iteration):
    """The KL weight at ``iteration``: linear warm-up over kl_anneal iterations, then cfg.kl_weight."""
    if cfg.kl_anneal <= 0:
        return cfg.kl_weight
    return cfg.kl_weight * min(1.0, iteration / cfg.kl_anneal)


def arch_lr_factor(cfg, iteration):
    """alpha's step size at ``iteration`` (1-based) as a fraction of ``cfg.arch_lr``.

    0 during the first ``arch_warmup`` iterations; then 1 ("constant"), or a half cosine from
    1 down to 0 at the end of ``schedule_iterations`` (default: the run's iterations) and 0
    after it ("cosine"), so an extended run keeps its architecture.
    """
    if iteration <= cfg.arch_warmup:
        return 0.0
    if cfg.arch_schedule == "constant":
        return 1.0
    span = cfg.schedule_span - cfg.arch_warmup
    frac = min(iteration - cfg.arch_warmup - 1, span) / max(span, 1)
    return 0.5 * (1.0 + math.cos(math.pi * frac))
