"""Several processes (and GPUs) with torch.distributed, launched by torchrun.

DDP cannot wrap code that calls ``torch.autograd.grad`` (the unrolled inner steps do),
so the meta-gradients are averaged by hand: every rank computes the gradient of its
share of the meta-batch's tasks, then one all-reduce of a flat buffer averages them
before the optimiser step. gloo on CPU, nccl on CUDA, picked automatically.
"""
import contextlib
import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from ..device import resolve_device
from ..errors import BayesNASError, ConfigError


@dataclass
class DistributedContext:
    """Rank, world size and the collective operations one training process needs."""

    rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")
    owns_group: bool = False

    @property
    def is_main(self):
        """True on the process that writes files and shows progress (rank 0)."""
        return self.rank == 0

    @property
    def active(self):
        return self.world_size > 1

    def share(self, count):
        """This rank's slice ``[start, stop)`` of ``count`` items split evenly across ranks."""
        if count % self.world_size:
            raise ConfigError(f"{count} tasks per meta-batch cannot be split evenly across {self.world_size} processes")
        per = count // self.world_size
        return self.rank * per, (self.rank + 1) * per

    def average_gradients(self, params):
        """All-reduce the ``.grad`` of ``params`` to their mean over ranks (one flat buffer)."""
        if not self.active:
            return
        params = [p for p in params if p.grad is not None]
        flat = torch.cat([p.grad.reshape(-1) for p in params])
        dist.all_reduce(flat)
        flat /= self.world_size
        offset = 0
        for p in params:
            n = p.grad.numel()
            p.grad.copy_(flat[offset:offset + n].view_as(p.grad))
            offset += n

    def mean_of(self, values):
        """Average a dict of floats over ranks (every rank gets the result)."""
        if not self.active or not values:
            return dict(values)
        keys = sorted(values)
        buf = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=self.device)
        dist.all_reduce(buf)
        buf /= self.world_size
        return dict(zip(keys, buf.tolist(), strict=True))

    def gather_objects(self, obj):
        """List of ``obj`` from every rank (on every rank)."""
        if not self.active:
            return [obj]
        out = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def broadcast_object(self, obj):
        """Rank 0's ``obj`` on every rank."""
        if not self.active:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def on_main(self, action):
        """Run ``action()`` on rank 0 and return its result on every rank.

        A BayesNASError raised there (a run folder that exists, a missing checkpoint) is
        raised on every rank, so no process waits for a partner that has given up.
        """
        result, error = None, None
        if self.is_main:
            try:
                result = action()
            except BayesNASError as exc:
                error = exc
        if not self.active:
            if error is not None:
                raise error
            return result
        error = self.broadcast_object(error)
        if error is not None:
            raise error
        return self.broadcast_object(result)

    def strided(self, count):
        """This rank's items of ``range(count)`` taken round-robin (for evaluation)."""
        return list(range(self.rank, count, self.world_size))

    def barrier(self):
        if self.active:
            dist.barrier()

    def close(self):
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()


def init_distributed(device, timeout_s=None):
    """Join the process group torchrun describes in the environment, or run alone.

    Args:
        device: the resolved torch.device of this process (CUDA: one GPU per local rank).
        timeout_s: seconds a collective may wait for a missing rank before failing
            (default: $BAYESNAS_DIST_TIMEOUT or 300).
    Returns:
        :class:`DistributedContext` (world_size 1 when WORLD_SIZE is unset or 1).
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistributedContext(device=device)
    if device.type == "cuda":
        local = int(os.environ.get("LOCAL_RANK", "0"))
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
        backend = "nccl"
    else:
        backend = "gloo"
    timeout = float(timeout_s or os.environ.get("BAYESNAS_DIST_TIMEOUT", "300"))
    owns = not dist.is_initialized()
    if owns:
        dist.init_process_group(backend=backend, timeout=datetime.timedelta(seconds=timeout))
    return DistributedContext(rank=dist.get_rank(), world_size=dist.get_world_size(), device=device, owns_group=owns)


def requested_device(config):
    """The device setting of a config dataclass or dict of its fields (None when it has none)."""
    return config.get("device") if isinstance(config, dict) else getattr(config, "device", None)


@contextlib.contextmanager
def distributed(device=None):
    """:func:`init_distributed` on ``resolve_device(device or "auto")`` for the block; the group is closed after."""
    ctx = init_distributed(resolve_device(device or "auto"))
    try:
        yield ctx
    finally:
        ctx.close()
