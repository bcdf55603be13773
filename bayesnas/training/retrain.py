"""``retrain``: second-order MAML training of a fixed network (a derived cell, DARTS_V2, Conv-4).

The network's own parameters are the meta-parameters. For every task of a meta-batch a
per-task copy takes ``inner_steps`` plain gradient steps on the support cross-entropy
(:func:`~bayesnas.inference.unroll.unrolled_steps`, the helper the fit guide uses too),
substituted into the network with ``torch.func.functional_call``; the query cross-entropy
of the adapted copies, averaged over the tasks, is differentiated through those steps
(second order; ``first_order`` detaches the inner gradients) and Adam steps the
meta-parameters. BatchNorm always normalises with the current batch's statistics (the
models layer keeps no running statistics), as MAML does.

Usage::

    result = retrain("darts_v2", RetrainConfig(iterations=100), out="runs/retrain-darts")
    result.rows[-1]["val_acc"]
    cfg, net, data = load_retrain("runs/retrain-darts")
"""
import dataclasses
import os
from dataclasses import dataclass
from typing import Any, Callable, Iterable

import torch
import torch.nn.functional as F
from torch.func import functional_call, grad, vmap
from tqdm.auto import tqdm

from ..config import RetrainConfig
from ..data import open_data
from ..data.sampler import select_tasks
from ..device import forward_in, resolve_device
from ..errors import ConfigError, RunError
from ..inference import unrolled_steps
from ..inference.unroll import deferred_finite_checks, require_finite
from ..models import arch_config, arch_label, build_network, count_parameters, genotype_from_dict
from .distributed import distributed, requested_device
from .loop import Callback, backward_per_task, read_run_config, read_step, resume_device
from .records import python_call
from .rundir import RunDirectory
from .session import Method, run_session
from .tensorboard_logger import TensorBoardLogger, summary_writer_class


def build_retrain_network(cfg, in_channels, image_size=28):
    """The network of a RetrainConfig: ``[B, in_channels, H, W] -> [B, cfg.ways]`` logits.

    Conv-4 takes ``cfg.channels`` filters per block (its head depends on ``image_size``, ``H``
    or ``(H, W)``);
    a genotype network starts its first cell at ``C = cfg.channels`` with ``cfg.layers`` cells.
    """
    arch = cfg.arch if isinstance(cfg.arch, str) else genotype_from_dict(cfg.arch, source="config arch")
    return build_network(arch, in_channels=in_channels, num_classes=cfg.ways, image_size=image_size,
                         C=cfg.channels, layers=cfg.layers, hidden=cfg.channels)


def meta_parameters(net):
    """The network's trainable tensors as a dict name -> tensor (the MAML meta-parameters)."""
    return {name: p for name, p in net.named_parameters() if p.requires_grad}


def adapt_task(net, params, support_x, support_y, steps, lr, first_order=False, checkpoint=False, precision="fp32"):
    """A task's fast weights: ``steps`` gradient steps on the support cross-entropy.

    Args:
        net: the network (its parameters are replaced by ``params`` in every call).
        params: dict name -> tensor, the starting point (the meta-parameters).
        support_x: ``[n_s, C, H, W]``; support_y: ``[n_s]`` labels.
        steps, lr: inner steps and step size; first_order: detach the inner gradients.
        checkpoint: recompute each inner step in the outer backward (memory-bounded).
        precision: the network's forward, "fp32" or "bf16" (:func:`~bayesnas.device.forward_in`).

    Returns:
        dict name -> tensor of the adapted weights (differentiable w.r.t. ``params``
        through the steps unless ``first_order``).
    """

    def support_loss(p, step):
        return F.cross_entropy(forward_in(precision, support_x.device, functional_call, net, p, (support_x,)),
                               support_y)

    return unrolled_steps(support_loss, params, steps, lr, first_order=first_order, checkpoint=checkpoint)


def maml_loss(net: torch.nn.Module, params: dict, batch: Any, steps: int, lr: float, first_order: bool = False,
              checkpoint: bool = False, precision: str = "fp32") -> tuple[torch.Tensor, torch.Tensor]:
    """The MAML objective of a meta-batch: mean query cross-entropy after adaptation.

    Args:
        net: the network, as for :func:`adapt_task`.
        params: its parameters, as for :func:`adapt_task`.
        batch: ``support_x [T, n_s, C, H, W]``, ``support_y [T, n_s]``, ``query_x [T, n_q, ...]``,
            ``query_y [T, n_q]`` (a sampler's Task batch).
        steps: inner steps (see :func:`adapt_task`).
        lr: inner step size.
        first_order: detach the inner gradients.
        checkpoint: recompute each inner step in the outer backward.
        precision: the networks' forward precision (:func:`~bayesnas.device.forward_in`).

    Returns:
        ``(loss, accuracy)``: scalar tensors, means over the T tasks; ``loss`` is
        differentiable w.r.t. ``params``.
    """
    losses, accs = [], []
    for t in range(batch.support_x.shape[0]):
        fast = adapt_task(net, params, batch.support_x[t], batch.support_y[t], steps, lr, first_order, checkpoint,
                          precision)
        logits = forward_in(precision, batch.query_x.device, functional_call, net, fast, (batch.query_x[t],))
        losses.append(F.cross_entropy(logits, batch.query_y[t]))
        accs.append((logits.detach().argmax(-1) == batch.query_y[t]).float().mean())
    return torch.stack(losses).mean(), torch.stack(accs).mean()


def maml_step(net: torch.nn.Module, optimiser: torch.optim.Optimizer, batch: Any, cfg: RetrainConfig,
              reduce_gradients: Callable | None = None) -> dict:
    """One meta-iteration: adapt on each task's support set, step the meta-parameters on the query loss.

    Args:
        net: the network; optimiser: over its parameters; batch: a sampler's Task batch.
        cfg: a :class:`RetrainConfig` (inner steps and step size, first order, clipping).
        reduce_gradients: optional ``callable(params)`` run between backward and the step
            (several processes average their meta-gradients there).

    Returns:
        dict of floats: loss (query cross-entropy), acc (query accuracy after adaptation).
    """
    params = meta_parameters(net)
    optimiser.zero_grad(set_to_none=True)
    num_tasks = batch.support_x.shape[0]
    # low_memory: one task's graph at a time (the mean's gradient is the sum of theirs / T)
    groups = [slice(t, t + 1) for t in range(num_tasks)] if cfg.low_memory else [slice(0, num_tasks)]

    def group_loss(g):
        part = select_tasks(batch, groups[g])
        part_loss, part_acc = maml_loss(net, params, part, cfg.inner_steps, cfg.inner_lr, cfg.first_order,
                                        checkpoint=cfg.low_memory, precision=cfg.precision)
        share = part.support_y.shape[0] / num_tasks  # the part's weight in the mean over tasks
        return part_loss * share, part_acc * share

    with deferred_finite_checks() as checks:  # read with the metrics: one host sync per step
        loss, accs = backward_per_task(len(groups), group_loss, "the query loss")
    acc = sum(accs)
    if reduce_gradients is not None:
        reduce_gradients(list(params.values()))
    if cfg.grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(list(params.values()), cfg.grad_clip)
    optimiser.step()  # a non-finite loss stops the run at the read below, before any checkpoint
    return read_step({"loss": loss, "acc": acc}, checks)


def adapt_and_predict(net: torch.nn.Module, params: dict, batch: Any, steps: int,
                      lr: float) -> tuple[dict, torch.Tensor, torch.Tensor]:
    """Every task of a batch adapted (first order) and scored in one batched call, no meta-gradient.

    The numbers of :func:`adapt_task` with ``first_order=True`` followed by the query forward,
    task by task, computed by ``torch.func.vmap`` over the tasks of ``torch.func.grad`` of the
    support loss: each task keeps its own weights and its own BatchNorm statistics (the
    batch dimension of a vmapped call is the task's own). Inside the transforms the
    convolutions run as ``F.conv2d`` (:func:`~bayesnas.models._conv.conv2d`), enough for
    first derivatives. Float32 or float64 only: under bf16 autocast ``torch.func.grad``'s
    backward mixes dtypes and fails (torch 2.13), so :func:`task_accuracies` runs the loop there.

    Args:
        net: the network; params: dict name -> tensor, the starting point of every task.
        batch: ``support_x [T, n_s, C, H, W]``, ``support_y [T, n_s]``, ``query_x [T, n_q, ...]``.
        steps, lr: inner steps and step size.

    Returns:
        ``(fast, logits, losses)``: dict name -> ``[T, *shape]`` adapted weights, query
        logits ``[T, n_q, ways]``, support losses before each step ``[steps, T]``; none of
        them differentiable.

    Example::

        batch = sampler.batch([0, 1, 2])
        fast, logits, _ = adapt_and_predict(net, meta_parameters(net), batch, 3, 0.4)
        accuracy = (logits.argmax(-1) == batch.query_y).double().mean(-1)   # [3]
    """

    def support_loss(p, x, y):
        loss = F.cross_entropy(functional_call(net, p, (x,)), y)
        return loss, loss

    def one_task(p, support_x, support_y, query_x):
        losses = []
        for _ in range(steps):
            g, loss = grad(support_loss, has_aux=True)(p, support_x, support_y)
            p = {name: value - lr * g[name] for name, value in p.items()}
            losses.append(loss)
        return p, functional_call(net, p, (query_x,)), torch.stack(losses) if losses else query_x.new_zeros(0)

    start = {name: value.detach() for name, value in params.items()}
    with torch.no_grad():  # grad() inside still differentiates; nothing outside it records a graph
        fast, logits, losses = vmap(one_task, in_dims=(None, 0, 0, 0), randomness="error")(
            start, batch.support_x, batch.support_y, batch.query_x)
    return fast, logits, losses.T


def task_accuracies(net, sampler, indices, steps, lr, chunk=4, progress=None, precision="fp32", batched=False):
    """Query accuracy of each task after ``steps`` first-order inner steps (no meta-gradient).

    Args:
        net: the (meta-trained) network; sampler: a TaskSampler; indices: task indices.
        steps, lr: the test-time inner loop; chunk: tasks sampled per batch.
        progress: optional callable ``(n_done)`` for a progress bar.
        precision: the network's forward, "fp32" or "bf16" (:func:`~bayesnas.device.forward_in`).
        batched: adapt and score each chunk's tasks in one batched call
            (:func:`adapt_and_predict`) instead of one task at a time; the same accuracies
            (float32 rounding aside). Under "bf16" the loop runs either way.

    Returns:
        float64 tensor ``[len(indices)]`` of per-task query accuracies in [0, 1].
    """
    indices = list(indices)
    start = {k: v.detach().requires_grad_(True) for k, v in meta_parameters(net).items()}
    out: list[torch.Tensor] = []
    done = 0
    with deferred_finite_checks() as checks:
        for first in range(0, len(indices), chunk):
            batch = sampler.batch(indices[first:first + chunk])
            if batched and precision == "fp32":
                _, logits, losses = adapt_and_predict(net, start, batch, steps, lr)
                for step in range(steps):  # the checks unrolled_steps records, one per step for all tasks
                    require_finite(losses[step], f"inner step {step}: objective")
                out.append((logits.argmax(-1) == batch.query_y).double().mean(-1))
            else:
                for t in range(batch.support_x.shape[0]):
                    with torch.enable_grad():
                        fast = adapt_task(net, start, batch.support_x[t], batch.support_y[t], steps, lr,
                                          first_order=True, precision=precision)
                    with torch.no_grad():
                        logits = forward_in(precision, batch.query_x.device, functional_call, net, fast,
                                            (batch.query_x[t],))
                    out.append((logits.argmax(-1) == batch.query_y[t]).double().mean().reshape(1))
            done += batch.support_x.shape[0]
            if progress is not None:
                progress(done)
    # read from the device once, with the inner steps' finiteness checks, not once per task
    values = torch.cat([checks.values(), *(o.to(checks.values().device) for o in out)]).tolist() if out else []
    checks.raise_first(values[:len(checks.whats)])
    return torch.tensor(values[len(checks.whats):], dtype=torch.float64)


@dataclass
class RetrainResult:
    """What :func:`retrain` returns: the meta-trained network, its config, metrics and run folder.

    ``parameters`` is the network's parameter count; ``seconds`` the wall time of this
    call's loop; ``train_seconds`` the summed time of all training steps of the run
    (validation excluded, resumed parts included).
    """

    net: torch.nn.Module
    config: RetrainConfig
    rows: list
    run_dir: str
    seconds: float
    train_seconds: float
    parameters: int


def retrain(arch: Any = None, config: RetrainConfig | dict | None = None, out: str | os.PathLike | None = None,
            resume: str | os.PathLike | None = None, progress: bool = True,
            callbacks: Iterable[Callback | Callable[[int, dict], Any]] = (), tensorboard: bool = False,
            command: str | None = None) -> "RetrainResult":
    """Meta-train a fixed network with second-order MAML and write a run folder.

    Args:
        arch: what to train (see :func:`arch_config`): a Genotype, a genotype JSON file,
            a fit run folder holding genotype.json, "conv4" or "darts_v2". None keeps
            ``config.arch`` (or, with ``resume``, the run's own).
        config: a :class:`RetrainConfig` (or dict of its fields).
        out: run folder to create (default: a new ``runs/retrain-<time>``).
        resume: an existing retrain run folder to continue from its last checkpoint (its
            own config is used; ``config`` may only raise ``iterations``).
        progress: show a progress bar and the log lines (validation scores, warnings) beside
            it; they go to ``RUN/log.txt`` either way.
        callbacks: :class:`~bayesnas.training.loop.Callback` objects, or ``(iteration, row)``
            callables told each step.
        tensorboard: also write every metric to TensorBoard event files in
            ``RUN/tensorboard/`` (needs ``pip install 'bayesnas[tensorboard]'``).
        command: the command line recorded in the run card (default: this Python call).

    The run folder holds config.json (with the genotype), checkpoint_last.pt and
    checkpoint_best.pt (by validation accuracy on the classes of ``select_on``), metrics.csv,
    and the run card README.md.

    Returns:
        :class:`RetrainResult`.
    """
    if tensorboard:
        summary_writer_class()  # a missing package stops the run before anything is written
        if (resume or out) is not None:  # and so does a planted RUN/tensorboard (a file, a symlink)
            RunDirectory(resume if resume is not None else out).subfolder("tensorboard", create=False)
    if command is None:
        command = python_call("bayesnas.training.retrain", arch=arch, config=config, out=out, resume=resume,
                              tensorboard=tensorboard or None)
    device = resume_device(resume, config) if resume is not None else requested_device(config)
    with distributed(device) as ctx:
        return _retrain(ctx, arch, config, out, resume, progress, callbacks, tensorboard, command)


def _retrain(ctx, arch, config, out, resume, progress, callbacks, tensorboard, command):
    if resume is not None:
        saved = ctx.on_main(lambda: read_run_config(RunDirectory(resume), RetrainConfig))
        if arch is not None and arch_config(arch) != saved.arch:
            raise RunError(f"{resume}: was trained for another architecture ({arch_label(saved.arch)}); "
                           f"--resume continues a run with its own architecture")
    elif arch is not None:
        config = (dataclasses.replace(config, arch=arch) if isinstance(config, RetrainConfig)
                  else dict(config or {}, arch=arch))
    session = run_session(ctx, RetrainConfig, config, out, resume, "retrain", MamlMethod, progress=progress,
                          callbacks=callbacks, tensorboard=tensorboard, command=command)
    net, rows = session.method.net, session.rows
    return RetrainResult(net=net, config=session.config, rows=rows,
                         run_dir=session.run.path if session.run is not None else None, seconds=session.loop.elapsed,
                         train_seconds=sum(r.get("seconds") or 0.0 for r in rows),
                         parameters=count_parameters(net, trainable_only=True))


class MamlMethod(Method):
    """What ``retrain`` trains: a fixed network by MAML."""

    def __init__(self, ctx, cfg, data, device, train_sampler, val_sampler, progress):
        self.ctx, self.cfg, self.train_sampler, self.val_sampler, self.progress = (ctx, cfg, train_sampler,
                                                                                   val_sampler, progress)
        try:
            self.net = build_retrain_network(cfg, data.channels, data.image_size).to(device)
        except ConfigError as exc:  # the data's images do not fit the network (Conv-4 needs 16 pixels a side)
            raise ConfigError(f"{data.path}: {exc}") from None
        self.optimiser = torch.optim.Adam(self.net.parameters(), lr=cfg.meta_lr)
        self.stateful = {"net": self.net, "optimiser": self.optimiser}
        self.extra = {}
        self.desc = f"retrain {arch_label(cfg.arch)}"

    def callbacks(self, run, tensorboard):
        return [TensorBoardLogger(run.subfolder("tensorboard"), hparams=self.cfg.to_dict())] if tensorboard else []

    def step(self, iteration):
        cfg, ctx = self.cfg, self.ctx
        start, stop = ctx.share(cfg.tasks)
        first = (iteration - 1) * cfg.tasks
        batch = self.train_sampler.batch(range(first + start, first + stop))
        return ctx.mean_of(maml_step(self.net, self.optimiser, batch, cfg, reduce_gradients=ctx.average_gradients))

    def validate(self, iteration):
        cfg, ctx = self.cfg, self.ctx
        mine = ctx.strided(cfg.val_tasks)
        with tqdm(total=len(mine), desc="validate", unit="task", leave=False,
                  disable=not (self.progress and ctx.is_main), dynamic_ncols=True) as bar:
            accs = (task_accuracies(self.net, self.val_sampler, mine, cfg.test_inner_steps, cfg.inner_lr,
                                    progress=lambda done: bar.update(done - bar.n),
                                    precision=cfg.precision) if mine else torch.zeros(0))
        totals = ctx.mean_of({"sum": accs.sum().item(), "count": float(len(mine))})
        return {"val_acc": totals["sum"] / totals["count"]}


def load_retrain(run_dir: str | os.PathLike, which: str = "best",
                 device: str | torch.device = "cpu") -> tuple[RetrainConfig, torch.nn.Module, Any]:
    """Rebuild a retrain run's meta-trained network from its folder.

    Args:
        run_dir: a folder written by :func:`retrain`; which: "best" (by validation
            accuracy) or "last" checkpoint; device: where to put the network.

    Returns:
        ``(config, net, data)``: the RetrainConfig, the network, the opened data file.
    """
    run = RunDirectory(run_dir)
    cfg = read_run_config(run, RetrainConfig)
    state = run.load_checkpoint(which)
    data = open_data(cfg.data)
    net = build_retrain_network(cfg, data.channels, data.image_size)
    try:
        net.load_state_dict(state["stateful"]["net"])
    except (KeyError, RuntimeError) as exc:
        raise RunError(f"{run.file('checkpoint_' + which + '.pt')}: does not hold a network matching "
                       f"{run.file('config.json')} ({type(exc).__name__}: {str(exc).splitlines()[0]})") from None
    return cfg, net.to(resolve_device(device)), data
