"""The search supernet, fused: every edge's mixed operation in a few large tensor calls.

A straightforward supernet (one module per op per edge, Python loops) makes thousands
of tiny convolution calls per forward and is bound by their launch cost (docs/design.md §5).
This one computes the same function with a few dozen calls per cell:

* Edges are processed by SOURCE state, not by target node: the 8 edges leaving the two
  cell inputs form one batch, then the 3, 2, 1 edges leaving intermediate nodes 0, 1, 2
  (4 batches per cell, the fewest the node dependencies allow). Everything that has no
  per-edge parameters is then computed once per source and shared by its edges: the
  ReLU, max/avg pooling (each followed by a BatchNorm without affine parameters, as in
  DARTS's mixed op) and the identity.
* The first depthwise convolution of every separable/dilated op of every edge of a batch
  is one grouped convolution per op with a channel multiplier (input channel ``c`` of
  source ``s`` produces one channel per edge), so the source is never copied per edge.
  Grouping several ops into one call at a common kernel size measured slower
  (docs/benchmarks.md): the larger kernels cost more than the calls they save.
* Pointwise convolutions are batched matrix products, BatchNorm is one call over all
  channels of a batch (it is per channel, so fusing is exact), conv_7x1_1x7 (1x7 striding
  ``(1, s)``, then 7x1 striding ``(s, 1)``) and the factorized reduce are grouped
  convolutions. Grouped convolutions go through
  :func:`bayesnas.models._conv.conv2d`, whose double backward is whole grouped calls
  (PyTorch's loops over the groups: 90% of a second-order step before).
* The architecture-weighted sum ``sum_e sum_o z[e, o] * op_o(x_e)`` of a batch is one
  matrix product of a ``[targets, outputs]`` mixing matrix gathered from ``z`` with all
  op outputs. ``none`` contributes nothing and is skipped. With one ``z`` per image
  (``z [B, 14, 10]``) the product takes one mixing matrix per image: the op outputs (and
  their BatchNorm statistics over the batch) do not depend on ``z``, only the sums do.

Discrete cells (weight-sharing evaluation: :mod:`bayesnas.analysis.score`) have a sparse
path: when asked (``forward(..., discrete=True)`` or inside :func:`discrete_cells`) and a
cell type's ``z`` has few nonzero entries besides ``none``, the same in every task
(:func:`sparse_edges`: one per kept edge of a discrete cell), its cells compute only those
(edge, op) pairs, on slices of the same fused parameters, each output times its ``z``
entry (:meth:`SearchCell.forward_discrete`): the same function, a fraction of the work.

Edge parameters are stacked over the 14 edges in source-major order (:data:`SOURCE_MAJOR`
maps positions to edge indices), one tensor per (op, conv): ``sep_conv_5x5_dw1`` is
``[14, C, 1, 5, 5]``. :mod:`bayesnas.models.reference` holds the straightforward
implementation (``FitConfig(supernet="reference")`` searches with it) and converts
parameters between the two; the tests check they agree.

Example:

>>> from bayesnas.models import NUM_EDGES, NUM_OPS
>>> net = SearchNetwork(in_channels=1, num_classes=5, C=2, layers=3)
>>> z = torch.full((NUM_EDGES, NUM_OPS), 0.1)
>>> net(torch.randn(4, 1, 16, 16), z, z).shape
torch.Size([4, 5])
"""
import contextlib
import contextvars
import functools
import math
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import ConfigError
from ._conv import conv2d, conv_input
from .genotypes import STEPS, cell_edges, edge_index, num_edges
from .macro import CellPlan, cell_plan, check_positive, make_preprocess, make_stem, reduction_indices
from .operations import (
    DIL_KERNELS,
    DILATION,
    NUM_OPS,
    OPS,
    POOL_OPS,
    SEP_KERNELS,
    FactorizedReduce,
    max_pool_3x3,
    shift_to_odd_pixels,
)

SEP_OPS = tuple(SEP_KERNELS)
DIL_OPS = tuple(DIL_KERNELS)
# Ops with a first depthwise stage, in the channel order of the fused tensors.
DW_OPS = SEP_OPS + DIL_OPS
_OP_INDEX = {name: i for i, name in enumerate(OPS)}
_NONE = _OP_INDEX["none"]
_DISCRETE = contextvars.ContextVar("bayesnas_discrete_cells", default=False)

#: At most this many computed (edge, op) pairs per cell type for the sparse path; more go fused.
#: A discrete cell has at most 14 (one per edge); a partly decided one (evidence's op decisions)
#: adds 9 per undecided edge. Measured on the 2-core dev CPU (benchmarks/bench_score.py
#: --crossover: C=4, 3 cells, 14x14, 5-way 1-shot; a loaded machine), the sparse path's time
#: over the fused path's: 0.36 at 14 pairs, 0.57-0.68 at 22-38, 0.88 at 46, 1.16 at 54, 2.2 at 126.
SPARSE_MAX_PAIRS = 40

#: the (edge, op index) pairs the sparse path computes for a cell type, in edge-index order
KeptEdges = tuple[tuple[int, int], ...]


@contextlib.contextmanager
def discrete_cells(enabled: bool = True):
    """Inside this block, :class:`SearchNetwork` forwards look for discrete edge weights.

    A forward called without ``discrete=`` (as the inference code calls it, through
    ``torch.func.functional_call``) then reads its ``z`` values (:func:`sparse_edges`: one
    small host read per cell type) and takes the sparse path for a cell type whose ``z``
    qualifies, the fused one otherwise. Outside (the default, and what training uses) ``z``
    is never inspected. ``enabled=False`` turns an enclosing block off.

    >>> with discrete_cells():
    ...     pass  # score fixed cells here
    """
    token = _DISCRETE.set(bool(enabled))
    try:
        yield
    finally:
        _DISCRETE.reset(token)


def sparse_edges(z: torch.Tensor) -> Optional[KeptEdges]:
    """The ``(edge, op)`` pairs the sparse path computes for edge weights ``z``, or None.

    The pairs are the nonzero entries of ``z [E, 10]`` or ``[T, E, 10]`` apart from ``none``
    (which contributes nothing whatever its weight): one per kept edge of a discrete cell
    (rows one-hot on none are skipped edges), every op of an edge still a mixture. ``z``
    qualifies when these entries are the same in every task and there are at most
    :data:`SPARSE_MAX_PAIRS`. Reads ``z`` on the host.

    >>> z = torch.zeros(14, 10); z[:, 0] = 1.0; z[3, 4] = 1.0
    >>> sparse_edges(z)
    ((3, 4),)
    """
    nonzero = z.detach().ne(0)
    nonzero[..., _NONE] = False
    nonzero = nonzero.reshape(-1, *z.shape[-2:]).cpu()
    pattern = nonzero[0]
    if not torch.equal(nonzero, pattern.expand_as(nonzero)) or int(pattern.sum()) > SPARSE_MAX_PAIRS:
        return None
    return tuple((int(e), int(o)) for e, o in pattern.nonzero().tolist())


def source_major(steps: int = STEPS) -> list[int]:
    """Edge indices in source-major order: all edges leaving state 0, then state 1, ...

    Position ``p`` of a fused edge parameter holds edge ``source_major(steps)[p]``.
    """
    return [edge_index(s, k, steps) for s in range(steps + 1) for k in range(max(0, s - 1), steps)]


SOURCE_MAJOR = source_major(STEPS)


def edge_batches(steps: int = STEPS) -> list[tuple[list[int], int, int]]:
    """The fused cell's edge batches: ``(sources, edges_per_source, first_position)``.

    Batch 0 is the edges leaving the two cell inputs; batch ``b >= 1`` the edges leaving
    intermediate node ``b - 1``. The targets of a batch are the last ``edges_per_source``
    nodes, in order; its edges occupy source-major positions
    ``first_position .. first_position + len(sources) * edges_per_source - 1``.
    """
    batches, pos = [([0, 1], steps, 0)], 2 * steps
    for b in range(1, steps):
        batches.append(([b + 1], steps - b, pos))
        pos += steps - b
    return batches


def _mix_index(steps, reduction):
    """For each batch, a ``[targets, outputs]`` index into ``cat(z.flatten(), [0])``.

    Column order of a batch's outputs (see SearchCell._edge_batch): skip (one per source,
    or one per edge when it is a factorized reduce), max pool and avg pool (one per
    source), then one per edge for each of sep 3/5/7, dil 3/5, conv_7x1_1x7.
    """
    zero = num_edges(steps) * NUM_OPS
    indices = []
    for b, (sources, m, _) in enumerate(edge_batches(steps)):
        targets = list(range(steps - m, steps))
        # (op, one column per edge?) in the order SearchCell._edge_batch stacks its outputs.
        strided_skip = reduction and b == 0
        layout = [("skip_connect", strided_skip), ("max_pool_3x3", False), ("avg_pool_3x3", False)]
        layout += [(op, True) for op in DW_OPS + ("conv_7x1_1x7",)]
        columns = []
        for op, per_edge in layout:
            if per_edge:
                columns += [(op, s, t) for s in sources for t in targets]
            else:
                columns += [(op, s, None) for s in sources]
        index = torch.full((len(targets), len(columns)), zero, dtype=torch.long)
        for col, (op, s, t) in enumerate(columns):
            for row, node in enumerate(targets):
                if t is None or t == node:
                    index[row, col] = edge_index(s, node, steps) * NUM_OPS + _OP_INDEX[op]
        indices.append(index)
    return indices


def _kernel_of(op):
    """(kernel size, dilation) of a depthwise op."""
    if op in SEP_KERNELS:
        return SEP_KERNELS[op], 1
    return DIL_KERNELS[op], DILATION


def _dw1_name(op):
    return f"{op}_dw1" if op in SEP_KERNELS else f"{op}_dw"


def _pw1_name(op):
    return f"{op}_pw1" if op in SEP_KERNELS else f"{op}_pw"


def _uniform_(t, fan_in):
    # nn.Conv2d's default initialisation (kaiming_uniform with a=sqrt(5)), per edge.
    bound = 1.0 / math.sqrt(fan_in)
    with torch.no_grad():
        t.uniform_(-bound, bound)
    return t


class SearchCell(nn.Module):
    """One fused cell of the supernet: 2 inputs, ``steps`` mixed nodes, concat output.

    Shapes: ``s0 [B, C_pp, H0, W0]``, ``s1 [B, C_p, H, W]`` -> ``[B, multiplier * C, H', W']``
    with ``H' = ceil(H / 2)`` in a reduction cell, else ``H``. A reduction cell ignores
    ``s0`` and preprocesses two copies of ``s1``: the paper's appendix B (DARTS feeds it
    the two previous cells' outputs, like a normal cell). ``mix`` is the list of mixing
    matrices from :meth:`SearchNetwork.mixing_matrices`.
    """

    def __init__(self, steps, multiplier, C_pp, C_p, C, reduction, reduction_prev):
        super().__init__()
        self.steps, self.multiplier, self.C = steps, multiplier, C
        self.reduction, self.reduction_prev = reduction, reduction_prev
        self.pre0, self.pre1 = make_preprocess(CellPlan(reduction, reduction_prev, C_pp, C_p, C), affine=False)

        E = num_edges(steps)
        for op, k in SEP_KERNELS.items():
            self._edge_param(f"{op}_dw1", (E, C, 1, k, k))
            self._edge_param(f"{op}_pw1", (E, C, C, 1, 1))
            self._edge_param(f"{op}_dw2", (E, C, 1, k, k))
            self._edge_param(f"{op}_pw2", (E, C, C, 1, 1))
        for op, k in DIL_KERNELS.items():
            self._edge_param(f"{op}_dw", (E, C, 1, k, k))
            self._edge_param(f"{op}_pw", (E, C, C, 1, 1))
        self._edge_param("conv_7x1_1x7_w1x7", (E, C, C, 1, 7))
        self._edge_param("conv_7x1_1x7_w7x1", (E, C, C, 7, 1))
        if reduction:
            # Only the 2 * steps edges leaving the cell inputs stride.
            self._edge_param("skip_connect_fr_a", (2 * steps, C // 2, C, 1, 1))
            self._edge_param("skip_connect_fr_b", (2 * steps, C - C // 2, C, 1, 1))

    def _edge_param(self, name, shape):
        fan_in = shape[2] * shape[3] * shape[4]
        self.register_parameter(name, nn.Parameter(_uniform_(torch.empty(shape), fan_in)))

    def _edge_chunks(self):
        """``chunks(name, b)``: edge parameter ``name`` at batch ``b``'s positions, ``[T, n, ...]``.

        Each parameter is cut once per forward with ``split`` (whose backward is one
        ``cat``), not sliced once per batch (a zero-filled full-size gradient per slice).
        """
        sizes = [len(sources) * m for sources, m, _ in edge_batches(self.steps)]
        cache = {}

        def chunks(name, b):
            if name not in cache:
                p = getattr(self, name)
                dim = p.dim() - 5
                parts = p.split(sizes if p.shape[dim] == sum(sizes) else [p.shape[dim]], dim)
                cache[name] = parts if dim else [c.unsqueeze(0) for c in parts]
            return cache[name][b]
        return chunks

    def _edge_batch(self, x, S, params, stride, W):
        """All mixed edges leaving the ``S`` sources of T tasks stacked in ``x [B, T*S*C, H, W]``.

        Channels are task-major: (task, source, channel). Each source has an edge to each
        of the last ``m`` nodes; returns their z-weighted sums ``[B, T, m, C * H' * W']``
        (the contributions to those nodes) with the mixing matrices ``W [T, m, outputs]``,
        or ``W [B, T, m, outputs]`` (one per image).
        ``params(name)`` is edge parameter ``name`` at this batch's edges. Every per-channel
        operation (depthwise convolution, BatchNorm, pooling) treats a task's channels as
        its own, so tasks never mix. Results of convolutions are reshaped, never viewed:
        on CPU they may be channels-last.
        """
        B, (T, m) = x.shape[0], W.shape[-3:-1]
        n = S * m
        r = conv_input(F.relu(x))  # feeds 6 or 8 convolutions
        stage1, (Ho, Wo) = self._depthwise_stage(r, params, S, m, T, stride)
        sep, dil = self._separable_stage(stage1, params, n, T, (Ho, Wo))
        conv7 = self._conv_7x1_1x7(r, params, S, n, T, stride)
        CHW = self.C * Ho * Wo
        outputs = self._parameter_free(x, r, params, S, n, T, stride)
        outputs += [sep.reshape(B, T, -1, CHW), dil.reshape(B, T, len(DIL_OPS) * n, CHW), conv7.reshape(B, T, n, CHW)]
        # One batched matrix product per (image, task) with the task's (or the image's) mixing matrix.
        return torch.matmul(W, torch.cat(outputs, 2)), (Ho, Wo)

    def _depthwise_stage(self, r, params, S, m, T, stride):
        """First stage of sep 3/5/7 and dil 3/5 on the ``n = S * m`` edges: depthwise (one call
        per op, a channel multiplier of ``m``), pointwise, BatchNorm.

        Returns ``[B, T, len(DW_OPS) * n * C, H' * W']`` in (task, op, source, edge,
        channel) order, and ``(H', W')``.
        """
        B, C = r.shape[0], self.C
        parts = []
        for op in DW_OPS:
            k, d = _kernel_of(op)
            w = params(_dw1_name(op)).reshape(T, S, m, C, k, k).permute(0, 1, 3, 2, 4, 5)
            y = conv2d(r, w.reshape(T * S * C * m, 1, k, k), stride=stride, padding=d * (k - 1) // 2, dilation=d,
                       groups=T * S * C)
            Ho, Wo = y.shape[-2:]
            # (task, source, channel, edge) -> (task, op, source, edge, channel)
            parts.append(y.reshape(B, T, S, C, 1, m, Ho * Wo).permute(0, 1, 4, 2, 5, 3, 6))
        pw1 = torch.stack([params(_pw1_name(op)) for op in DW_OPS], 1).view(T, len(DW_OPS), S, m, C, C)
        y = torch.matmul(pw1, torch.cat(parts, 2)).view(B, T * len(DW_OPS) * S * m * C, Ho * Wo)
        return F.batch_norm(y, None, None, training=True).view(B, T, -1, Ho * Wo), (Ho, Wo)

    def _separable_stage(self, stage1, params, n, T, size):
        """Second stage of the separable ops (stride 1, no channel multiplier): ``(sep, dil)``.

        ``sep [B, T * 3 * n * C, H' * W']`` the finished separable ops; ``dil`` the dilated
        ops' outputs, which have no second stage. ``split`` (not slicing), so that backward
        assembles the gradient with one cat, not zero-fills.
        """
        B, C, (Ho, Wo) = stage1.shape[0], self.C, size
        nC, HW = n * C, Ho * Wo
        *sep1, dil = stage1.split([nC] * len(SEP_OPS) + [len(DIL_OPS) * nC], 2)
        ys = []
        for t, (op, k) in zip(sep1, SEP_KERNELS.items(), strict=True):
            w = params(f"{op}_dw2").reshape(T * nC, 1, k, k)
            y = conv2d(F.relu(t).reshape(B, T * nC, Ho, Wo), w, padding=k // 2, groups=T * nC)
            ys.append(y.reshape(B, T, 1, nC, HW))
        pw2 = torch.stack([params(f"{op}_pw2") for op in SEP_OPS], 1).view(T, len(SEP_OPS) * n, C, C)
        y = torch.matmul(pw2, torch.cat(ys, 2).reshape(B, T, len(SEP_OPS) * n, C, HW))
        return F.batch_norm(y.view(B, T * len(SEP_OPS) * nC, HW), None, None, training=True), dil

    def _conv_7x1_1x7(self, r, params, S, n, T, stride):
        """conv_7x1_1x7 of the ``n`` edges: 1x7 per source with all its edges' outputs, then 7x1 per
        edge, each striding along the axis its kernel spans; BatchNorm. ``[B, T * n * C, H' * W']``."""
        B, C = r.shape[0], self.C
        w = params("conv_7x1_1x7_w1x7").reshape(T * n * C, C, 1, 7)
        y = conv2d(r, w, stride=(1, stride), padding=(0, 3), groups=T * S)
        w = params("conv_7x1_1x7_w7x1").reshape(T * n * C, C, 7, 1)
        y = conv2d(y, w, stride=(stride, 1), padding=(3, 0), groups=T * n)
        return F.batch_norm(y.reshape(B, T * n * C, -1), None, None, training=True)

    def _parameter_free(self, x, r, params, S, n, T, stride):
        """The identity (a factorized reduce per edge when striding), max and avg pooling, each
        ``[B, T, sources or edges, C * H' * W']``; pooling is computed once per source."""
        B, C = x.shape[0], self.C
        outputs = []
        if stride == 2:
            wa, wb = params("skip_connect_fr_a"), params("skip_connect_fr_b")
            fr_a = conv2d(r, wa.reshape(-1, C, 1, 1), stride=2, groups=T * S)
            fr_b = conv2d(shift_to_odd_pixels(r), wb.reshape(-1, C, 1, 1), stride=2, groups=T * S)
            HW = fr_a.shape[-2] * fr_a.shape[-1]
            fr = torch.cat([fr_a.reshape(B, T, n, -1, HW), fr_b.reshape(B, T, n, -1, HW)], 3).reshape(B, T * n * C, HW)
            outputs.append(F.batch_norm(fr, None, None, training=True).reshape(B, T, n, C * HW))
        else:
            outputs.append(x.reshape(B, T, S, -1))
        # Pooling's BatchNorm is per channel and channels are task-major, so each task is
        # normalised over its own batch.
        for pooled in (max_pool_3x3(x, stride), F.avg_pool2d(x, 3, stride, 1, count_include_pad=False)):
            outputs.append(F.batch_norm(pooled, None, None, training=True).reshape(B, T, S, -1))
        return outputs

    def forward(self, s0, s1, mix):
        """``s0``, ``s1``: ``[B, T*C_in, H, W]`` task-major; ``mix``: ``[T, targets, outputs]`` per batch,
        or ``[B, T, targets, outputs]`` (one per image)."""
        T = mix[0].shape[-3]
        if self.reduction:
            s0 = s1
        s0, s1 = _task_module(self.pre0, s0, T), _task_module(self.pre1, s1, T)
        B, C = s1.shape[0], self.C
        contributions = []
        nodes = []
        edges = self._edge_chunks()
        for b, (sources, _, _) in enumerate(edge_batches(self.steps)):
            if b == 0:
                x = _task_cat([s0, s1], T)
                stride = 2 if self.reduction else 1
            else:
                x, stride = nodes[-1], 1
            c, (Ho, Wo) = self._edge_batch(x, len(sources), functools.partial(edges, b=b), stride, mix[b])
            contributions.append(c.unbind(2))
            # Node b is complete: it has received an edge from every state 0 .. b + 1.
            node = contributions[0][b]
            for j in range(1, b + 1):
                node = node + contributions[j][b - j]
            nodes.append(node.reshape(B, T * C, Ho, Wo))
        return _task_cat(nodes[-self.multiplier:], T)

    def forward_discrete(self, s0, s1, z, kept):
        """The cell computing only the ``kept`` (edge, op) pairs (:func:`sparse_edges`).

        ``s0``, ``s1`` as in :meth:`forward`; ``z [T, edges, 10]`` the edge weights of the
        cell type; ``kept`` ``((edge, op), ...)``: one per kept edge of a discrete cell, or
        several on an edge that is still a mixture. Node k is ``sum z[:, e, op] * op(state)``
        over its pairs (zeros if none): :meth:`forward`'s value whenever ``z`` is zero off
        ``kept`` (``none`` aside), since the fused mixture's other terms are then zero times
        an op output. Each op reads its edge's slice of the fused parameters and computes
        what the fused batch computes for that edge (the same ReLU, strides, paddings,
        BatchNorms with batch statistics); states no pair reads are not computed. Gradients
        w.r.t. the parameters are the fused path's (exact zeros where it skips;
        ``torch.autograd.grad(..., allow_unused=True)`` gives None for a tensor nothing
        reads). Gradients w.r.t. ``z`` are the fused path's on the ``kept`` entries and zero
        elsewhere (the fused path's are the skipped ops' outputs there).
        """
        T, steps = z.shape[0], self.steps
        if self.reduction:
            s0 = s1
        raw = ((self.pre0, s0), (self.pre1, s1))
        states, relu, shared = {}, {}, {}
        position = {e: p for p, e in enumerate(source_major(steps))}
        edges = cell_edges(steps)

        def state(i):
            if i not in states:
                states[i] = _task_module(*raw[i], T) if i < 2 else nodes[i - 2]
            return states[i]

        def op_output(source, e, op):
            x = state(source)
            stride = 2 if self.reduction and source < 2 else 1
            if OPS[op] in POOL_OPS or (OPS[op] == "skip_connect" and stride == 1):
                if (source, op) not in shared:  # no parameters: one output per source
                    shared[source, op] = self._discrete_parameter_free(x, OPS[op], stride)
                return shared[source, op]
            if source not in relu:
                relu[source] = conv_input(F.relu(x))  # shared by the convolutions of this source
            return self._discrete_op(relu[source], OPS[op], position[e], stride, T)

        B, C = s1.shape[0], self.C
        H, W = s1.shape[-2:]
        size = (-(-H // 2), -(-W // 2)) if self.reduction else (H, W)
        nodes = []
        for k in range(steps):
            node = None
            for e, op in kept:
                source, target = edges[e]
                if target != k:
                    continue
                y = op_output(source, e, op)
                term = (y.reshape(B, T, -1) * z[:, e, op, None]).reshape(B, T * C, *y.shape[-2:])
                node = term if node is None else node + term
            nodes.append(s1.new_zeros(B, T * C, *size) if node is None else node)
        return _task_cat(nodes[-self.multiplier:], T)

    def _discrete_parameter_free(self, x, op, stride):
        """The identity, or a pooling with its BatchNorm, of a source ``[B, T*C, H, W]``."""
        if op == "skip_connect":
            return x
        y = max_pool_3x3(x, stride) if op == "max_pool_3x3" else F.avg_pool2d(x, 3, stride, 1, count_include_pad=False)
        return F.batch_norm(y, None, None, training=True)

    def _edge_weight(self, name, position, T):
        """Edge parameter ``name`` at fused position ``position``: ``[T, *shape]``."""
        p = getattr(self, name)
        return p[:, position] if p.dim() == 6 else p[position][None]

    def _discrete_op(self, r, op, position, stride, T):
        """One edge's op with parameters on ``r = relu(source)`` ``[B, T*C, H, W]`` -> ``[B, T*C, H', W']``."""
        B, C = r.shape[0], self.C

        def weight(name):
            return self._edge_weight(name, position, T)

        def pointwise(y, name):
            # a matrix product per task, as the fused stages compute it
            Ho, Wo = y.shape[-2:]
            y = torch.matmul(weight(name).reshape(T, C, C), y.reshape(B, T, C, Ho * Wo))
            return F.batch_norm(y.view(B, T * C, Ho, Wo), None, None, training=True)

        if op == "skip_connect":  # strided: a factorized reduce
            a = conv2d(r, weight("skip_connect_fr_a").reshape(-1, C, 1, 1), stride=2, groups=T)
            b = conv2d(shift_to_odd_pixels(r), weight("skip_connect_fr_b").reshape(-1, C, 1, 1), stride=2, groups=T)
            return F.batch_norm(_task_cat([a, b], T), None, None, training=True)
        if op == "conv_7x1_1x7":
            y = conv2d(r, weight("conv_7x1_1x7_w1x7").reshape(T * C, C, 1, 7), stride=(1, stride), padding=(0, 3),
                       groups=T)
            y = conv2d(y, weight("conv_7x1_1x7_w7x1").reshape(T * C, C, 7, 1), stride=(stride, 1), padding=(3, 0),
                       groups=T)
            return F.batch_norm(y, None, None, training=True)
        k, d = _kernel_of(op)
        y = conv2d(r, weight(_dw1_name(op)).reshape(T * C, 1, k, k), stride=stride, padding=d * (k - 1) // 2,
                   dilation=d, groups=T * C)
        y = pointwise(y, _pw1_name(op))
        if op in DIL_KERNELS:
            return y
        y = conv2d(conv_input(F.relu(y)), weight(f"{op}_dw2").reshape(T * C, 1, k, k), padding=k // 2, groups=T * C)
        return pointwise(y, f"{op}_pw2")


def _task_cat(states, T):
    """Concatenate task-major states ``[B, T*C_i, H, W]`` channel-wise within each task."""
    if T == 1:
        return torch.cat(states, 1)
    B, _, H, W = states[0].shape
    return torch.cat([s.reshape(B, T, -1, H, W) for s in states], 2).reshape(B, -1, H, W)


def _task_weight(p, T):
    """A convolution weight ``[C_out, C_in, kh, kw]`` or task-batched ``[T, C_out, ...]`` as ``[T * C_out, ...]``."""
    return p.reshape(T * p.shape[-4], *p.shape[-3:])


def _task_module(module, x, T):
    """ReLUConvBN / FactorizedReduce on task-major ``x [B, T*C_in, H, W]``, one group per task."""
    x = conv_input(F.relu(x))
    if isinstance(module, FactorizedReduce):
        a = conv2d(x, _task_weight(module.conv_a.weight, T), stride=2, groups=T)
        b = conv2d(shift_to_odd_pixels(x), _task_weight(module.conv_b.weight, T), stride=2, groups=T)
        y = _task_cat([a, b], T)
    else:
        conv = module.conv
        y = conv2d(x, _task_weight(conv.weight, T), stride=conv.stride, padding=conv.padding, groups=T)
    return F.batch_norm(y, None, None, training=True)


class SearchNetwork(nn.Module):
    """The fused DARTS-style search supernet ``f(x; theta, z)``.

    stem (3x3 conv to ``stem_multiplier * C`` channels, BN) -> ``layers`` search cells
    (reduction cells at :func:`~bayesnas.models.macro.reduction_indices`, which double the
    channels and halve the resolution) -> global average pooling -> linear.
    All BatchNorms are affine=False and use batch statistics only (no buffers): every
    learnable tensor is an ``nn.Parameter``, so ``torch.func.functional_call`` with
    substituted parameters works, through double backward.

    ``forward(x, z_normal, z_reduce)``: ``x [B, in_channels, H, W]``, ``z_* [14, 10]``
    (one row of op weights per edge, :data:`~bayesnas.models.genotypes.EDGES` order, ops
    in :data:`~bayesnas.models.operations.OPS` order; rows need not sum to 1), or
    ``[B, 14, 10]`` (one per image) -> logits ``[B, num_classes]``. ``z_normal`` is shared
    by all normal cells, ``z_reduce`` by all reduction cells. A reduction cell reads two
    copies of the previous cell's output, as in the paper's appendix B (DARTS: the previous two).
    """

    #: ``forward`` takes T tasks at once (``x [T, B, ...]`` with ``[T, *shape]`` parameters)
    task_batched = True

    def __init__(self, in_channels=1, num_classes=5, C=8, layers=3, steps=STEPS, multiplier=4,
                 stem_multiplier=3):
        super().__init__()
        check_positive(in_channels=in_channels, num_classes=num_classes, C=C, layers=layers,
                       steps=steps, multiplier=multiplier, stem_multiplier=stem_multiplier)
        if multiplier > steps:
            raise ConfigError(f"multiplier={multiplier}: a cell concatenates at most its "
                              f"{steps} intermediate nodes")
        self.in_channels, self.num_classes, self.C = in_channels, num_classes, C
        self.layers, self.steps, self.multiplier = layers, steps, multiplier
        self.num_edges = num_edges(steps)
        self.reductions = reduction_indices(layers)
        self.stem = make_stem(in_channels, stem_multiplier * C, affine=False)
        plan, C_p = cell_plan(C, layers, stem_multiplier, multiplier)
        self.cells = nn.ModuleList(SearchCell(steps, multiplier, p.C_pp, p.C_p, p.C, p.reduction, p.reduction_prev)
                                   for p in plan)
        self.classifier = nn.Linear(C_p, num_classes)
        for red in (False, True):
            for b, index in enumerate(_mix_index(steps, red)):
                self.register_buffer(f"_mix_{int(red)}_{b}", index, persistent=False)

    def mixing_matrices(self, z, reduction):
        """Per edge batch, the ``[targets, outputs]`` matrix of ``z`` weights of a cell type.

        ``z [num_edges, 10]`` -> list of ``steps`` matrices (zeros where an output does not
        feed a target); ``z [T, num_edges, 10]`` -> ``[T, targets, outputs]`` each, and so on
        for any leading dimensions (``[T, B, targets, outputs]`` for ``z [T, B, num_edges, 10]``).
        Shared by all cells of the type within one forward.
        """
        lead = z.shape[:-2]
        flat = torch.cat([z.reshape(*lead, -1), z.new_zeros(*lead, 1)], -1)
        return [flat[..., getattr(self, f"_mix_{int(reduction)}_{b}")] for b in range(self.steps)]

    def forward(self, x, z_normal, z_reduce, discrete: Optional[bool] = None):
        """Logits of one task, or of T tasks at once.

        One task: ``x [B, C, H, W]``, ``z_* [14, 10]``, the module's own parameters ->
        ``[B, classes]``. T tasks: ``x [T, B, C, H, W]``, ``z_* [T, 14, 10]``, and every
        parameter substituted (``torch.func.functional_call``) by a ``[T, *shape]``
        tensor, task t's weights in row t -> ``[T, B, classes]``. The T tasks run as one
        network whose channels are task-major and whose convolutions have T times the
        groups: the same function as T separate calls, in a T-th of the calls.

        Either ``z`` may also hold one row set per image, ``[B, 14, 10]`` (one task) or
        ``[T, B, 14, 10]``: image b's nodes mix the op outputs with its own weights. The op
        outputs are those of the whole batch (BatchNorm normalises each over the images), so
        with the same z for every image this equals the forward with that z; such a cell type
        always takes the fused path.

        ``discrete``: True reads ``z`` and takes the sparse path for each cell type whose
        ``z`` qualifies (:func:`sparse_edges`; the same value, computing only the nonzero
        (edge, op) pairs: :meth:`SearchCell.forward_discrete`), the fused one for the others;
        False never reads ``z``; None (default) is True inside :func:`discrete_cells`,
        else False. Inside ``torch.func`` transforms the fused path is always taken.
        """
        batched = x.dim() == 5
        T = x.shape[0] if batched else 1
        if x.dim() not in (4, 5) or x.shape[-3] != self.in_channels:
            raise ValueError(f"x has shape {tuple(x.shape)}, expected [B, {self.in_channels}, H, W] "
                             f"or [T, B, {self.in_channels}, H, W]")
        per_task = ((T,) if batched else ()) + (self.num_edges, NUM_OPS)
        per_image = per_task[:-2] + (x.shape[-4],) + per_task[-2:]
        for name, z in (("z_normal", z_normal), ("z_reduce", z_reduce)):
            if tuple(z.shape) not in (per_task, per_image):
                tasks = "tasks, " if batched else ""
                raise ValueError(f"{name} has shape {tuple(z.shape)}, expected {per_task} ({tasks}edges, ops) "
                                 f"or {per_image} ({tasks}images, edges, ops)")
        stem_w = self.stem[0].weight
        if stem_w.dim() != (5 if batched else 4) or (batched and stem_w.shape[0] != T):
            raise ValueError(f"{T if batched else 1} task(s) in x but the stem weight has shape "
                             f"{tuple(stem_w.shape)}: substitute [T, *shape] parameters for T tasks")
        if batched:
            x = x.transpose(0, 1).reshape(x.shape[1], T * self.in_channels, *x.shape[-2:])
        s = conv2d(x, _task_weight(stem_w, T), padding=1, groups=T)
        s0 = s1 = F.batch_norm(s, None, None, training=True)
        if discrete is None:
            discrete = _DISCRETE.get()
        kept, mix = {}, {}
        if discrete and not torch._C._are_functorch_transforms_active():  # vmap cannot read values
            kept = {red: sparse_edges(z) for red, z in ((False, z_normal), (True, z_reduce))
                    if tuple(z.shape) == per_task}
        for cell in self.cells:
            red = cell.reduction
            z = z_reduce if red else z_normal
            z = z if batched else z[None]
            if kept.get(red) is not None:
                s0, s1 = s1, cell.forward_discrete(s0, s1, z, kept[red])
                continue
            if red not in mix:
                mix[red] = self.mixing_matrices(z, red)
                if z.dim() == 4:  # [T, B, targets, outputs] -> image-major, as the cells' matmul broadcasts it
                    mix[red] = [w.transpose(0, 1) for w in mix[red]]
            s0, s1 = s1, cell(s0, s1, mix[red])
        B = s1.shape[0]
        features = s1.mean((2, 3)).view(B, T, -1)                      # [B, T, C_p]
        w, bias = self.classifier.weight, self.classifier.bias
        if not batched:
            w, bias = w[None], bias[None]
        logits = torch.einsum("btc,tkc->tbk", features, w) + bias[:, None]
        return logits if batched else logits[0]
