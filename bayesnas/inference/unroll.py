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
from typing import Any, Callable

import torch
from torch.utils.checkpoint import checkpoint as _checkpoint

from ..errors import NonFiniteLossError


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
        current = dict(zip(names, values))
        value = objective(current, step)
        if not torch.isfinite(value).all():
            raise NonFiniteLossError(f"inner step {step}: objective is {value.item()} (not finite)")
        grads = torch.autograd.grad(
            value,
            values,
            create_graph=not first_order,
            allow_unused=True,
        )
        new = []
        for name, grad in zip(names, grads):
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
    return dict(zip(names, values))
