"""Small networks and task families with known answers, for the inference and analysis tests."""
import torch
import torch.nn as nn

from bayesnas.inference import MetaNetwork

NUM_EDGES, NUM_OPS = 14, 10


class ChannelSelectNet(nn.Module):
    """A toy 'supernet' whose edge-0 operations each read one input channel.

    forward(x, z_normal, z_reduce): x ``[B, 10, F]``; op o of edge 0 is a linear map of
    channel o; the logits are ``sum_o (z_normal[0, o] + z_reduce[0, o]) / 2 * x[:, o] @ W_o``.
    When only channel k carries the label, op k is the best op of edge 0 by construction.
    z may also be ``[B, 14, 10]``, one per image (image b mixes with its own weights).
    """

    def __init__(self, features=4, ways=2):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(NUM_OPS, features, ways))
        self.bias = nn.Parameter(torch.zeros(ways))

    def forward(self, x, z_normal, z_reduce):
        per_op = torch.einsum("bof,ofw->bow", x, self.weight)
        z = (z_normal[..., 0, :] + z_reduce[..., 0, :]) / 2
        if z.dim() == 2:
            return torch.einsum("bow,bo->bw", per_op, z) + self.bias
        return torch.einsum("bow,o->bw", per_op, z) + self.bias


def channel_tasks(num_tasks, ways=2, shots=5, queries=5, features=4, signal_channel=4, generator=None):
    """Tasks for :class:`ChannelSelectNet`: only ``signal_channel`` separates the classes.

    Each task draws random class means (±2 per feature) in the signal channel; every other
    channel is pure noise of the same variance. Returns (support_x ``[T, ways*shots, 10, F]``, support_y,
    query_x, query_y).
    """
    g = generator
    n = shots + queries
    means = 2.0 * torch.sign(torch.randn(num_tasks, ways, features, generator=g))
    # noise channels get the signal channel's marginal variance (1 + 2^2): only
    # informativeness, not magnitude, tells the channels apart
    x = torch.randn(num_tasks, ways, n, NUM_OPS, features, generator=g) * 5**0.5
    x[:, :, :, signal_channel] = means[:, :, None] + torch.randn(num_tasks, ways, n, features, generator=g)
    y = torch.arange(ways).view(1, ways, 1).expand(num_tasks, ways, n)
    sx, qx = x[:, :, :shots].flatten(1, 2), x[:, :, shots:].flatten(1, 2)
    sy, qy = y[:, :, :shots].flatten(1, 2), y[:, :, shots:].flatten(1, 2)
    return sx, sy.contiguous(), qx, qy.contiguous()


class ToyBatch:
    """A meta-batch of :func:`channel_tasks` as the scorers read one (``support_x`` ... ``query_y``)."""

    def __init__(self, sx, sy, qx, qy):
        self.support_x, self.support_y, self.query_x, self.query_y = sx, sy, qx, qy


def make_meta(dtype=torch.float32, **kw):
    """A seeded :class:`~bayesnas.inference.MetaNetwork` over :class:`ChannelSelectNet` (sigma_init 0.1 by default)."""
    torch.manual_seed(0)
    meta = MetaNetwork(ChannelSelectNet(), sigma_init=kw.pop("sigma_init", 0.1), **kw)
    return meta.to(dtype)


def toy_batch(num_tasks=2, dtype=torch.float32):
    """``num_tasks`` seeded :func:`channel_tasks`: (support_x, support_y, query_x, query_y)."""
    g = torch.Generator().manual_seed(1)
    sx, sy, qx, qy = channel_tasks(num_tasks, generator=g)
    return sx.to(dtype), sy, qx.to(dtype), qy


class Kill(Exception):
    """Raised by a callback to stop a run mid-way, as a killed process would stop it."""
