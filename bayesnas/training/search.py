"""``fit``: stochastic variational inference of the BASE meta-network.

Each iteration samples T tasks, adapts each task's posterior by the guide's unrolled
steps on its support set, computes the full ELBO on the query sets (expected
log-likelihood minus the KL terms of theta and z, traced with Pyro), and takes one
optimiser step on W = (mu, sigma, alpha) (and h_V, learnable step sizes).

Usage::

    result = fit(FitConfig(iterations=20), out="runs/demo")
    result.meta.alpha_normal.softmax(-1)     # meta-level edge probabilities [14, 10]
"""
import os
from dataclasses import dataclass
from typing import Any, Callable, Iterable

import torch
from tqdm.auto import tqdm

from ..config import FitConfig
from ..data import open_data
from ..data.sampler import select_tasks
from ..errors import RunError
from ..inference import EdgeSampling, MetaNetwork, adapt, adapt_held_out, elbo_terms, predictive
from ..inference.model import current_task_share, task_share
from ..inference.unroll import deferred_finite_checks
from ..models import NUM_EDGES, NUM_OPS, SearchNetwork
from ..models.reference import ReferenceSearchNetwork
from ..rng import seeded
from .diagnostics import SearchDiagnostics, search_diagnostics
from .distributed import DistributedContext, distributed, requested_device
from .loop import Callback, backward_per_task, check_finite, read_run_config, read_step, resume_device
from .records import python_call
from .rundir import RunDirectory
from .schedules import arch_lr_factor, kl_weight, temperature
from .session import Method, run_session
from .tensorboard_logger import meta_posterior_logger, summary_writer_class


def edge_sampling(cfg):
    """The :class:`~bayesnas.inference.meta.EdgeSampling` of a FitConfig: how its search draws and uses z."""
    return EdgeSampling(per_example=cfg.z_per_example, hard=cfg.straight_through, inner_tau_end=cfg.inner_tau_end,
                        prune_below=cfg.prune_below)


def build_meta_network(cfg, in_channels, net=None):
    """The MetaNetwork of a FitConfig over ``net`` (default: the fused supernet of ``cfg.ways`` classes)."""
    if net is None:
        kind = ReferenceSearchNetwork if cfg.supernet == "reference" else SearchNetwork
        net = kind(in_channels=in_channels, num_classes=cfg.ways, C=cfg.channels, layers=cfg.cells)
    return MetaNetwork(
        net,
        sigma_init=cfg.sigma_init,
        inner_lr={"mu": cfg.inner_lr_mu, "rho": cfg.inner_lr_rho, "alpha": cfg.inner_lr_alpha},
        learn_inner_lr=cfg.learn_inner_lr,
        set_encoder=cfg.set_encoder,
        in_channels=in_channels,
        batch_tasks=cfg.batch_tasks,
        precision=cfg.precision,
        sampling=edge_sampling(cfg),
    )


def make_optimiser(meta, cfg):
    """Adam with one step size for alpha (arch_lr) and another for everything else (meta_lr)."""
    arch = [meta.alpha_normal, meta.alpha_reduce]
    arch_ids = {id(p) for p in arch}
    rest = [p for p in meta.meta_parameters() if id(p) not in arch_ids]
    return torch.optim.Adam([{"params": rest, "lr": cfg.meta_lr}, {"params": arch, "lr": cfg.arch_lr}])


def arch_group(optimiser, meta):
    """The optimiser's parameter group that holds alpha (found by identity, not position)."""
    for group in optimiser.param_groups:
        if any(p is meta.alpha_normal for p in group["params"]):
            return group
    raise ValueError("the optimiser does not hold alpha_normal: build it with make_optimiser(meta, cfg)")


def meta_batch_indices(cfg, first, ctx):
    """This process's task indices of the meta-batch that starts at task ``first``."""
    start, stop = ctx.share(cfg.tasks)
    return list(range(first + start, first + stop)), task_share(cfg.tasks, start, stop)


def evaluate_tasks(meta, cfg, sampler, num_tasks, tau, seed, ctx=None, kl_weight=1.0, progress=False):
    """Mean query accuracy and query ELBO per point over the first tasks of ``sampler``.

    Tasks go in meta-batches of ``cfg.tasks`` (``num_tasks`` rounded up to a multiple),
    split across processes like training. Uses its own RNG (forked, seeded) so that
    validating never changes the training streams. ``tau`` and ``kl_weight`` should be
    the training schedule's (the guide's mean step depends on the KL weight); the query ELBO
    and predictions are taken at the query temperature (``meta.sampling.query_tau``). ``progress``:
    a transient tqdm bar over the tasks (rank 0 only).
    """
    ctx = ctx or DistributedContext(device=meta.mu.device)
    relaxed = cfg.variant == "gumbel"
    query_tau = meta.sampling.query_tau(tau)
    acc_sum = elbo_sum = 0.0  # tensors after the first batch: read once, at the end
    count = 0
    total = -(-num_tasks // cfg.tasks) * cfg.tasks
    with seeded(seed, meta.mu.device), deferred_finite_checks() as checks, \
            tqdm(total=total, desc="validate", unit="task", leave=False, disable=not (progress and ctx.is_main),
                 dynamic_ncols=True) as bar:
        for first in range(0, num_tasks, cfg.tasks):
            indices, share = meta_batch_indices(cfg, first, ctx)
            batch = sampler.batch(indices)
            with share:
                q = adapt_held_out(meta, batch.support_x, batch.support_y, cfg.inner_steps, tau, relaxed,
                                   kl_weight=kl_weight, edge_kl=cfg.edge_kl)
                with torch.no_grad():
                    terms = elbo_terms(meta, batch.query_x, batch.query_y, q, query_tau, relaxed,
                                       edge_kl=cfg.edge_kl)
                probs = predictive(meta, q, batch.query_x, cfg.val_samples, query_tau, relaxed).mean(0)
            # each batch's float32 sum added in float64, as Python floats would be
            acc_sum = acc_sum + (probs.argmax(-1) == batch.query_y).float().mean(-1).sum().double()
            elbo_sum = elbo_sum + (terms.elbo(1.0) / batch.query_y.shape[1]).sum().double()
            count += len(indices)
            bar.update(cfg.tasks)
    read = read_step({"acc": acc_sum, "elbo": elbo_sum}, checks)  # one host sync for all the tasks
    acc_sum, elbo_sum = read["acc"], read["elbo"]
    totals = ctx.mean_of({"acc": acc_sum / count, "elbo": elbo_sum / count})
    return totals["acc"], totals["elbo"]


def step_gradients(meta: MetaNetwork, batch: Any, cfg: FitConfig, tau: float | torch.Tensor,
                   beta: float | torch.Tensor) -> tuple:
    """The query loss of one SVI step and its backward: the guide's steps on the support sets, the
    query ELBO, ``.grad`` of the meta-parameters (accumulated; the optimiser is not stepped).

    Args:
        meta, batch, cfg: as :func:`svi_step`.
        tau, beta: the iteration's temperature and KL weight: floats, or 0-dim tensors on the
            meta-network's device (benchmarks/cuda_graph.py captures this function with both
            as device tensors, so that a replay takes the schedule's next values).

    Returns:
        ``(loss, terms)``: the scalar loss (negative ELBO per query point) and the per-task
        :class:`~bayesnas.inference.elbo.ElboTerms` (detached when the tasks are taken one at a time).
        Its finiteness checks go to the enclosing :func:`~bayesnas.inference.unroll.deferred_finite_checks`.
    """
    relaxed = cfg.variant == "gumbel"
    n_query = batch.query_y.shape[1]
    if cfg.low_memory or not cfg.batch_tasks:
        parts, loss = _per_task_backward(meta, batch, cfg, tau, relaxed, beta, checkpoint=cfg.low_memory)
        return loss, type(parts[0])(*(torch.cat(t) for t in zip(*parts, strict=True)))
    q = adapt(meta, batch.support_x, batch.support_y, cfg.inner_steps, tau, relaxed,
              kl_weight=beta, first_order=cfg.first_order, edge_kl=cfg.edge_kl)
    terms = elbo_terms(meta, batch.query_x, batch.query_y, q, meta.sampling.query_tau(tau), relaxed,
                       edge_kl=cfg.edge_kl)
    loss = -terms.elbo(beta).mean() / n_query
    check_finite(loss, "the query ELBO")
    loss.backward()
    return loss, terms


def svi_step(meta: MetaNetwork, optimiser: torch.optim.Optimizer, batch: Any, cfg: FitConfig, iteration: int,
             reduce_gradients: Callable | None = None, gradients: Callable = step_gradients) -> dict:
    """One SVI iteration on a meta-batch: adapt the guide on the support sets, step W on the query ELBO.

    Args:
        meta: the MetaNetwork; optimiser: a torch optimiser over ``meta.meta_parameters()``.
        batch: anything with ``support_x [T, n_s, ...]``, ``support_y [T, n_s]``,
            ``query_x [T, n_q, ...]``, ``query_y [T, n_q]`` (a sampler's Task).
        cfg: a FitConfig (variant, inner steps, KL weight, temperature schedule, clipping).
        iteration: 1-based, for the temperature and KL-weight schedules.
        reduce_gradients: optional ``callable(params)`` run between backward and the
            optimiser step (several processes average their meta-gradients there).
        gradients: what computes the loss and the backward, ``(meta, batch, cfg, tau, beta) ->
            (loss, terms)``: :func:`step_gradients`, or a replay of it (benchmarks/cuda_graph.py).

    Returns:
        dict of floats: loss (negative ELBO per query point), loglik, kl_theta, kl_z, acc, tau, kl_weight.
        tau is the iteration's temperature, at which the guide's steps start (the query's is
        ``meta.sampling.query_tau(tau)``).
    """
    tau = temperature(cfg, iteration)
    beta = kl_weight(cfg, iteration)
    n_query = batch.query_y.shape[1]
    optimiser.zero_grad(set_to_none=True)
    with deferred_finite_checks() as checks:  # read with the metrics below: one host sync per step
        loss, terms = gradients(meta, batch, cfg, tau, beta)
    if reduce_gradients is not None:
        reduce_gradients(meta.meta_parameters())
    arch_factor = arch_lr_factor(cfg, iteration)
    if arch_factor == 0.0:  # alpha is left alone (Adam skips a parameter without a gradient)
        meta.alpha_normal.grad = meta.alpha_reduce.grad = None
    arch_group(optimiser, meta)["lr"] = cfg.arch_lr * arch_factor
    if cfg.grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(meta.meta_parameters(), cfg.grad_clip)
    # a non-finite loss is raised after the step, at the one read: the step may have made the
    # parameters non-finite, but the run stops here and the last good checkpoint is kept
    optimiser.step()
    return read_step({
        "loss": loss,
        "loglik": terms.loglik.mean() / n_query,
        "kl_theta": terms.kl_theta.mean(),
        "kl_z": terms.kl_z.mean(),
        "acc": (terms.logits.argmax(-1) == batch.query_y).float().mean(),
        "tau": tau,
        "kl_weight": beta,
        "arch_lr": cfg.arch_lr * arch_factor,
        "sigma_mean": meta.sigma.mean(),
    }, checks)


def _per_task_backward(meta, batch, cfg, tau, relaxed, beta, checkpoint):
    """Backward one task at a time; with ``checkpoint`` (the memory-bounded step) the
    inner steps are recomputed in the outer backward.

    Each task's pass starts from the same random state (:func:`~bayesnas.training.loop.backward_per_task`)
    and, through :func:`task_share`, takes its own slice of noise drawn for the
    whole meta-batch: exactly the noise the all-tasks pass would give it, so values and
    gradients equal the default path's (up to the order of floating-point sums). Returns
    the per-task detached ElboTerms and the total loss.
    """
    num_tasks, n_query = batch.query_y.shape
    total, start, _ = current_task_share(num_tasks)

    def task_loss(t):
        task = select_tasks(batch, slice(t, t + 1))
        q = adapt(meta, task.support_x, task.support_y, cfg.inner_steps, tau, relaxed,
                  kl_weight=beta, first_order=cfg.first_order, checkpoint=checkpoint, edge_kl=cfg.edge_kl)
        terms = elbo_terms(meta, task.query_x, task.query_y, q, meta.sampling.query_tau(tau), relaxed,
                           edge_kl=cfg.edge_kl)
        return -terms.elbo(beta).sum() / (num_tasks * n_query), type(terms)(*(v.detach() for v in terms))

    loss, parts = backward_per_task(num_tasks, task_loss, "the query ELBO", rng_device=meta.mu.device,
                                    context=lambda t: task_share(total, start + t, start + t + 1))
    return parts, loss


def _with_diagnostics(history):
    """A history restored from a checkpoint, with the diagnostics of its entries computed
    from their alpha if it was written before fit recorded them."""
    if "genotype" not in history:
        past, previous = [], None
        for normal, reduce in zip(history["alpha_normal"], history["alpha_reduce"], strict=True):
            past.append(search_diagnostics(normal, reduce, previous))
            previous = past[-1].genotype
        for key in SearchDiagnostics._fields:
            history[key] = [getattr(d, key) for d in past]
    return history


@dataclass
class FitResult:
    """What :func:`fit` returns: the trained meta-network, its config, metrics and run folder
    (``run_dir`` is None on the processes other than rank 0 of a distributed job)."""

    meta: MetaNetwork
    config: FitConfig
    rows: list
    run_dir: str
    seconds: float


def fit(config: FitConfig | dict | None = None, out: str | os.PathLike | None = None,
        resume: str | os.PathLike | None = None, progress: bool = True,
        callbacks: Iterable[Callback | Callable[[int, dict], Any]] = (), tensorboard: bool = False,
        command: str | None = None) -> "FitResult":
    """Meta-train BASE by SVI and write a run folder.

    Args:
        config: a :class:`~bayesnas.config.FitConfig` (or dict of its fields); defaults
            are sized for a 2-core CPU on the embedded Omniglot data.
        out: run folder to create (default: a new ``runs/fit-<time>``).
        resume: an existing run folder to continue from its last checkpoint (its own
            config is used; ``config`` may only raise ``iterations``).
        progress: show a progress bar and the log lines (validation scores, warnings) beside
            it; they go to ``RUN/log.txt`` either way.
        callbacks: :class:`~bayesnas.training.loop.Callback` objects, or ``(iteration, row)``
            callables told each step.
        tensorboard: also write TensorBoard event files to ``RUN/tensorboard/`` (needs
            ``pip install 'bayesnas[tensorboard]'``): every metric, the mean edge entropy
            and top-op probability, the posterior heatmap and derived cell at each validation.
        command: the command line recorded in the run card ``RUN/README.md`` (the CLI
            passes its own; default: this Python call).

    Returns:
        :class:`FitResult`.
    """
    if tensorboard:
        summary_writer_class()  # a missing package stops the run before anything is written
        if (resume or out) is not None:  # and so does a planted RUN/tensorboard (a file, a symlink)
            RunDirectory(resume if resume is not None else out).subfolder("tensorboard", create=False)
    if command is None:
        command = python_call("bayesnas.training.fit", config=config, out=out, resume=resume,
                              tensorboard=tensorboard or None)
    # the process group needs a device type (gloo or nccl) before the config of a resumed run is read
    device = resume_device(resume, config) if resume is not None else requested_device(config)
    with distributed(device) as ctx:
        return _fit(ctx, config, out, resume, progress, callbacks, tensorboard, command)


def _fit(ctx, config, out, resume, progress, callbacks, tensorboard, command):
    session = run_session(ctx, FitConfig, config, out, resume, "fit", SearchMethod, progress=progress,
                          callbacks=callbacks, tensorboard=tensorboard, command=command)
    return FitResult(meta=session.method.meta, config=session.config, rows=session.rows,
                     run_dir=session.run.path if session.run is not None else None, seconds=session.loop.elapsed)


class SearchMethod(Method):
    """What ``fit`` trains: the meta-network by SVI, its alpha history logged as it goes."""

    desc = "fit"

    def __init__(self, ctx, cfg, data, device, train_sampler, val_sampler, progress):
        self.ctx, self.cfg, self.train_sampler, self.val_sampler, self.progress = (ctx, cfg, train_sampler,
                                                                                   val_sampler, progress)
        self.meta = build_meta_network(cfg, data.channels).to(device)
        self.optimiser = make_optimiser(self.meta, cfg)
        self.stateful = {"meta": self.meta, "optimiser": self.optimiser}
        self.history = {"iteration": [], "alpha_normal": [], "alpha_reduce": [],
                        **{k: [] for k in SearchDiagnostics._fields}}
        self.extra = {"history": self.history}

    def callbacks(self, run, tensorboard):
        logger = [meta_posterior_logger(run.subfolder("tensorboard"), self.cfg.to_dict(), self.meta)] if tensorboard \
            else []
        return logger + [HistoryWriter(run)]

    def resumed(self, loop):
        self.history = _with_diagnostics(loop.extra["history"])
        loop.extra["history"] = self.history

    def fresh(self, loop):
        if not self.history["iteration"]:
            self.record_alpha(0)

    def record_alpha(self, iteration):
        """Log alpha and its :class:`SearchDiagnostics` in the history; returns the diagnostics as a dict."""
        history, meta = self.history, self.meta
        history["iteration"].append(iteration)
        history["alpha_normal"].append(meta.alpha_normal.detach().cpu().clone())
        history["alpha_reduce"].append(meta.alpha_reduce.detach().cpu().clone())
        previous = history["genotype"][-1] if history["genotype"] else None
        diagnostics = search_diagnostics(meta.alpha_normal, meta.alpha_reduce, previous)._asdict()
        for key, value in diagnostics.items():
            history[key].append(value)
        return diagnostics

    def step(self, iteration):
        cfg, ctx = self.cfg, self.ctx
        indices, share = meta_batch_indices(cfg, (iteration - 1) * cfg.tasks, ctx)
        with share:
            row = svi_step(self.meta, self.optimiser, self.train_sampler.batch(indices), cfg, iteration,
                           reduce_gradients=ctx.average_gradients)
        # alpha is the same on every process: its diagnostics (a string among them) need no averaging
        row = ctx.mean_of(row)
        if iteration % cfg.log_every == 0:
            row.update(self.record_alpha(iteration))
        return row

    def validate(self, iteration):
        cfg = self.cfg
        acc, elbo = evaluate_tasks(self.meta, cfg, self.val_sampler, cfg.val_tasks, temperature(cfg, iteration),
                                   seed=cfg.seed + 12345, ctx=self.ctx, kl_weight=kl_weight(cfg, iteration),
                                   progress=self.progress)
        return {"val_acc": acc, "val_elbo": elbo}


class HistoryWriter(Callback):
    """Writes the posterior history (``posterior_history.pt``) beside every checkpoint of a fit run."""

    def __init__(self, run):
        self.run = run

    def on_checkpoint(self, iteration, extra):
        self.run.write_history(extra["history"])


def load_fit(run_dir: str | os.PathLike, which: str = "last",
             device: str | torch.device = "cpu") -> tuple[FitConfig, MetaNetwork, Any]:
    """Rebuild a fit run's MetaNetwork from its folder.

    Args:
        run_dir: a folder written by :func:`fit`.
        which: "last" or "best" checkpoint.

    Returns:
        ``(config, meta, data)``: the FitConfig, the MetaNetwork in eval-ready state on
        ``device``, and the opened data file the run used.
    """
    cfg, meta, data, _ = load_fit_state(run_dir, which)
    return cfg, meta.to(device), data


def load_fit_checkpoint(run, which="last"):
    """Checkpoint ``which`` ("last" or "best") of the fit run folder ``run`` (a RunDirectory), checked to
    hold a fit meta-network: a :class:`RunError` naming the file otherwise."""
    state = run.load_checkpoint(which)
    path = run.file(f"checkpoint_{which}.pt")
    meta = state.get("stateful", {}).get("meta")
    shapes = {k: tuple(meta[k].shape) for k in ("alpha_normal", "alpha_reduce") if isinstance(meta, dict) and k in meta}
    if len(shapes) != 2 or "iteration" not in state:
        raise RunError(f"{path}: holds no fit meta-network (no alpha_normal/alpha_reduce); "
                       f"it was written by another command")
    if any(s != (NUM_EDGES, NUM_OPS) for s in shapes.values()):
        raise RunError(f"{path}: edge logits have shapes {shapes}, this bayesnas expects ({NUM_EDGES}, {NUM_OPS})")
    return state


def load_fit_state(run_dir, which="last"):
    """:func:`load_fit` on the CPU, plus the checkpoint's state dict (its ``"iteration"``, RNG, ...)."""
    run = RunDirectory(run_dir)
    cfg = read_run_config(run, FitConfig)
    state = load_fit_checkpoint(run, which)
    data = open_data(cfg.data)
    meta = build_meta_network(cfg, data.channels)
    try:
        meta.load_state_dict(state["stateful"]["meta"])
    except (KeyError, RuntimeError) as exc:
        raise RunError(f"{run.file('checkpoint_' + which + '.pt')}: does not hold a fit meta-network matching "
                       f"{run.file('config.json')} ({type(exc).__name__}: {str(exc).splitlines()[0]})") from None
    return cfg, meta, data, state
