"""``fit``'s SVI step with its loss and backward replayed from a CUDA graph (``bench_fit.py --cuda-graph``).

    graphed = GraphedGradients(meta, cfg, batch)   # static buffers shaped like ``batch``
    graphed.capture()                              # CUDA only: warm-up on a side stream, then the capture
    svi_step(meta, optimiser, next_batch, cfg, iteration, gradients=graphed)

Captured: :func:`~bayesnas.training.search.step_gradients`, the guide's N unrolled inner
steps on the support sets, the query ELBO and its backward into the meta-parameters'
``.grad``, reading static buffers: the meta-batch's four tensors, and the temperature and
the KL weight as 0-dim device tensors (a Python float would be fixed in the graph at its
captured value, and a device tensor made from one is a copy from the host, which a capture
forbids). Its random draws, the guide's Gaussian and Gumbel noise, come from the device's
generator; a replay advances the generator as the eager step would.

Left outside, eager as in ``fit``: sampling the meta-batch (indexing the data on the host)
and copying it into the buffers, zeroing the gradients, gradient clipping, the Adam step
(``fit``'s optimiser, not ``capturable``) and the step's one host read of its metrics and
finiteness checks. The step taken one task at a time (``low_memory``, ``batch_tasks=False``)
is not captured: it restores the device's random state for every task.

Without :meth:`GraphedGradients.capture` (on the CPU, say) the same object runs
``step_gradients`` eagerly on its buffers: the tests compare that with the plain step.
"""
import os
import sys
import traceback
from types import SimpleNamespace

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from bayesnas.inference.model import validate_args  # noqa: E402
from bayesnas.inference.unroll import deferred_finite_checks, require_finite  # noqa: E402
from bayesnas.training.search import step_gradients  # noqa: E402
from benchmarks.bench_syncs import SyncCounter  # noqa: E402

#: the meta-batch's tensors that the step reads (a Task's ``classes`` is not read)
FIELDS = ("support_x", "support_y", "query_x", "query_y")
CAPTURED = ("the guide's inner steps, the query ELBO and its backward (step_gradients), on static copies of the "
            "meta-batch, the temperature and the KL weight")
OUTSIDE = ("sampling the meta-batch (host-side indexing) and copying it into the static buffers",
           "zeroing and re-attaching the gradients", "gradient clipping", "the Adam step (fit's optimiser)",
           "the one host read of the metrics and finiteness checks")


def refusal(cfg):
    """Why ``cfg``'s step cannot be captured here, or None."""
    if cfg.low_memory or not cfg.batch_tasks:
        return ("the step taken one task at a time (low_memory, batch_tasks=False) restores the device's random "
                "state for every task, which a capture cannot do; only the batched step is captured")
    if cfg.precision != "fp32":
        return f"precision {cfg.precision}: only fp32 is captured (autocast keeps a cache of casts across calls)"
    if validate_args():
        return ("BAYESNAS_VALIDATE=1: the distributions check their arguments on the host, a read a capture forbids "
                "(unset it)")
    return None


#: where an error is located for :func:`describe`: the innermost frame in one of these
_SOURCES = ("/bayesnas/", "/pyro/", "/torch/distributions/", "/benchmarks/")


def describe(error):
    """``Type: message (file:line)``: the message's first line (a CUDA error appends paragraphs
    of advice) and the innermost frame of bayesnas, Pyro, torch.distributions or benchmarks/
    that the error came through (where, in the step, a capture failed)."""
    message = str(error).strip().splitlines()
    text = f"{type(error).__name__}: {message[0] if message else ''}"
    for frame in reversed(traceback.extract_tb(error.__traceback__)):
        name = frame.filename.replace(os.sep, "/")
        cut = max(name.rfind(source) for source in _SOURCES)
        if cut >= 0:
            return f"{text} ({name[cut + 1:]}:{frame.lineno})"
    return text


class CaptureHazards(SyncCounter):
    """What a capture forbids, counted by place in an eager run: host reads (:class:`SyncCounter`'s),
    copies between devices, and non-empty tensors made from Python data (``torch.tensor(0.5,
    device=...)``: on a GPU a blocking copy from the host). The last is counted on the CPU too,
    where the tests run, so it also flags such a tensor made on the CPU of a GPU run, which is
    harmless; Pyro's empty ``torch.tensor(())``, which only asks for the default device, is not counted.
    """

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        made_from_data = func in (torch.ops.aten.lift_fresh.default, torch.ops.aten.lift_fresh_copy.default) \
            and args[0].numel() > 0
        if made_from_data or _crosses_devices(func, args, kwargs or {}):
            self._record()
        return super().__torch_dispatch__(func, types, args, kwargs)


def _crosses_devices(func, args, kwargs):
    if func is torch.ops.aten._to_copy.default:
        target = kwargs.get("device")
        return target is not None and torch.device(target) != args[0].device
    if func is torch.ops.aten.copy_.default:
        return args[0].device != args[1].device
    return False


def capture_hazards(action):
    """``{place: count}`` of :class:`CaptureHazards` in ``action()`` (``place`` is ``file:line``)."""
    with CaptureHazards() as counter:
        action()
    return dict(counter.places)


class GraphedGradients:
    """The ``gradients`` of :func:`~bayesnas.training.search.svi_step`, on static buffers, replayable as a CUDA graph.

    Args:
        meta: the MetaNetwork it computes the gradients of; cfg: the FitConfig of its steps.
        batch: a meta-batch (a sampler's Task): the buffers take its shapes, device and values.

    Calling it as ``gradients(meta, batch, cfg, tau, beta)`` copies ``batch``, ``tau`` and ``beta``
    into the buffers, then replays the graph (after :meth:`capture`) or runs ``step_gradients``
    eagerly on the buffers (before), and returns ``(loss, terms)``; the returned tensors are
    the graph's outputs, overwritten by the next replay.
    """

    def __init__(self, meta, cfg, batch):
        why = refusal(cfg)
        if why is not None:
            raise ValueError(why)
        self.meta, self.cfg = meta, cfg
        self.batch = SimpleNamespace(**{name: getattr(batch, name).detach().clone() for name in FIELDS})
        self.tau = torch.ones((), dtype=meta.mu.dtype, device=meta.mu.device)
        self.beta = torch.ones((), dtype=meta.mu.dtype, device=meta.mu.device)
        self.graph = None
        self.outputs = None
        self.grads: list = []

    def load(self, batch, tau, beta):
        """Copy a meta-batch of the captured shapes, the temperature and the KL weight into the buffers."""
        for name in FIELDS:
            source, target = getattr(batch, name), getattr(self.batch, name)
            if source.shape != target.shape:
                raise ValueError(f"batch.{name} has shape {tuple(source.shape)}, the captured step "
                                 f"{tuple(target.shape)}")
            target.copy_(source)
        self.tau.fill_(tau)
        self.beta.fill_(beta)

    def compute(self):
        """``step_gradients`` on the buffers: ``(loss, terms, checks)``; what :meth:`capture` captures."""
        with deferred_finite_checks() as checks:
            loss, terms = step_gradients(self.meta, self.batch, self.cfg, self.tau, self.beta)
        return loss, terms, checks

    def capture(self, warmup=2):
        """Warm up on a side stream (``warmup`` steps of gradients, parameters untouched), then capture
        :meth:`compute`. CUDA only. Returns the :func:`capture_hazards` of the first warm-up step.

        A failure inside the capture is raised as a RuntimeError naming it first and then what
        ending the capture said (the latter alone is an uninformative "capture invalidated").
        """
        device = self.meta.mu.device
        if device.type != "cuda":
            raise ValueError(f"a CUDA graph needs the meta-network on a CUDA device, not {device}")
        stream = torch.cuda.Stream(device)
        stream.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(stream):
            hazards = {}
            for i in range(max(warmup, 1)):
                self.meta.zero_grad(set_to_none=True)
                if i == 0:
                    hazards = capture_hazards(self.compute)
                else:
                    self.compute()
        torch.cuda.current_stream(device).wait_stream(stream)
        # unset gradients are allocated in the graph's own memory, and each replay rewrites them there
        self.meta.zero_grad(set_to_none=True)
        graph = torch.cuda.CUDAGraph()
        inside = None
        try:
            with torch.cuda.graph(graph, stream=stream):
                try:
                    self.outputs = self.compute()
                except Exception as error:
                    inside = error
                    raise
        except Exception as error:
            if inside is None or inside is error:
                raise
            raise RuntimeError(f"{describe(inside)}; then, ending the capture: {describe(error)}") from inside
        self.grads = [(p, p.grad) for p in self.meta.parameters() if p.grad is not None]
        self.graph = graph
        return hazards

    def __call__(self, meta, batch, cfg, tau, beta):
        if meta is not self.meta or cfg != self.cfg:
            raise ValueError("these graphed gradients were built for another meta-network or FitConfig")
        self.load(batch, tau, beta)
        if self.graph is None:
            loss, terms, checks = self.compute()
        else:
            self.graph.replay()
            for parameter, grad in self.grads:  # svi_step set them to None before calling
                parameter.grad = grad
            loss, terms, checks = self.outputs
        for what, value in zip(checks.whats, checks.tensors, strict=True):
            require_finite(value, what)  # into svi_step's checks, read with its metrics
        return loss, terms
