"""The one unrolled-gradient-step helper.

Both the optimisation-embedding guide of BASE (ascent on a task's support ELBO) and
second-order MAML retraining (descent on a task's support loss) take a few plain
gradient steps on per-task copies of the meta-parameters. The steps are differentiable
(``create_graph=True``) so that the outer gradient flows back through them into the
meta-parameters: that is what makes both methods second order.

Example (one step of size 0.25 on w**2 from w = 1: 1 - 0.25 * 2 = 0.5, and the outer
gradient flows through the step: d(0.5 w)/dw = 0.5):

>>> w = torch.tensor(1.0, requires_grad=True)
>>> fast = unrolled_steps(lambda p, step: p["w"] ** 2, {"w": w}, steps=1, lr=0.25)
>>> fast["w"].item()
0.5
>>> fast["w"].backward(); w.grad.item()
0.5

Memory: the outer backward needs every step's graph, so by default peak memory grows
linearly with the number of steps. With ``checkpoint=True`` a step keeps only its
inputs; its graph (forward, backward and the inner gradient's own graph) is rebuilt
during the outer backward (``torch.utils.checkpoint``, non-reentrant, random state
restored), which costs one more forward and backward per step and gives the same values
and gradients.
"""
import contextlib
import contextvars
from typing import Any, Callable

import torch
from torch.utils.checkpoint import checkpoint as _checkpoint

from ..errors import NonFiniteLossError

_CHECKS = contextvars.ContextVar("bayesnas_finite_checks", default=None)


class FiniteChecks:
    """Finiteness checks collected on the device, read in one host sync with a step's metrics.

    Reading ``torch.isfinite(x).all()`` in Python waits for the device (a host sync on a
    GPU); a training step checks its loss once per inner step and once per task. Inside
    :func:`deferred_finite_checks`, :func:`require_finite` only records the check;
    :meth:`values` is a tensor to read together with the step's metrics, and
    :meth:`raise_first` raises the error the first failed check would have raised.
    """

    def __init__(self):
        self.whats, self.tensors = [], []

    def add(self, value, what):
        value = value.detach()
        self.whats.append(what)
        # the value's sum is NaN or infinite exactly when one of its entries is not finite
        self.tensors.append(value.sum().reshape(1).to(torch.float64))

    def values(self, device=None):
        """``[checks]`` float64: each checked value's sum (non-finite where the check fails)."""
        if not self.tensors:
            return torch.zeros(0, dtype=torch.float64, device=device)
        return torch.cat(self.tensors)

    def raise_first(self, values):
        """Raise NonFiniteLossError for the first non-finite entry of ``values`` (floats read from :meth:`values`)."""
        for what, value in zip(self.whats, values, strict=True):
            if value != value or value in (float("inf"), float("-inf")):
                raise NonFiniteLossError(f"{what} is {value} (not finite)")


@contextlib.contextmanager
def deferred_finite_checks():
    """Collect the :func:`require_finite` checks of the block in a :class:`FiniteChecks` (yielded)."""
    checks = FiniteChecks()
    token = _CHECKS.set(checks)
    try:
        yield checks
    finally:
        _CHECKS.reset(token)


def require_finite(value, what):
    """NonFiniteLossError naming ``what`` unless every entry of ``value`` is finite.

    Checked now (a host sync), or, inside :func:`deferred_finite_checks`, recorded for one read later.
    """
    checks = _CHECKS.get()
    if checks is not None:
        checks.add(value, what)
    elif not torch.isfinite(value).all():
        raise NonFiniteLossError(f"{what} is {value.detach().sum().item()} (not finite)")


def unrolled_steps(objective: Callable[[dict, int], torch.Tensor], params: dict, steps: int, lr: Any,
                   first_order: bool = False, maximize: bool = False, checkpoint: bool = False) -> dict:
    """Take ``steps`` differentiable gradient steps on ``objective``.

    Args:
        objective: callable ``(params, step) -> scalar tensor``; ``params`` is a dict of
            tensors of the same keys and shapes as the input dict.
        params: dict name -> tensor, the starting point (e.g. the meta-parameters, or
            their per-task broadcast ``[T, ...]``). They must be part of the autograd
            graph (require grad) for the outer gradient to reach them.
        steps: number of steps (0 returns ``params`` unchanged).
        lr: a float, a scalar tensor, or a dict name -> float/tensor (per-group step
            sizes; a learnable step size is a tensor that requires grad).
        first_order: if True the inner gradients are detached: the outer gradient then
            flows through the identity path only (first-order MAML).
        maximize: gradient ascent instead of descent (the guide maximises an ELBO).
        checkpoint: recompute each step's graph in the outer backward instead of keeping
            it (memory independent of ``steps``; ignored when ``first_order``).

    Returns:
        dict name -> tensor after the last step.
    """
    sign = 1.0 if maximize else -1.0
    names = list(params)

    def take_step(step, *values):
        current = dict(zip(names, values, strict=True))
        value = objective(current, step)
        require_finite(value, f"inner step {step}: objective")
        grads = torch.autograd.grad(
            value,
            values,
            create_graph=not first_order,
            allow_unused=True,
        )
        new = []
        for name, grad in zip(names, grads, strict=True):
            if grad is None:
                new.append(current[name])
                continue
            if first_order:
                grad = grad.detach()
            step_size = lr[name] if isinstance(lr, dict) else lr
            new.append(current[name] + sign * step_size * grad)
        return tuple(new)

    values = tuple(params[n] for n in names)
    for step in range(steps):
        if checkpoint and not first_order:
            values = _checkpoint(take_step, step, *values, use_reentrant=False)
        else:
            values = take_step(step, *values)
    return dict(zip(names, values, strict=True))
