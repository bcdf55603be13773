"""The reference search supernet: one module per op per edge, Python loops, as DARTS writes it.

Same function and parameter maths as :class:`~bayesnas.models.supernet.SearchNetwork`
(the fused one, which is many times faster on a CPU); kept as the reference the tests
compare the fused one against, the baseline the benchmarks time, and the fallback a
search can run on (``FitConfig(supernet="reference")``, ``bayesnas fit --supernet
reference``). :func:`copy_parameters` copies parameters between the two in either direction.
"""
import torch
import torch.nn as nn

from .genotypes import STEPS, cell_edges
from .macro import CellPlan, cell_plan, make_preprocess, make_stem
from .operations import DIL_KERNELS, OPS, POOL_OPS, SEP_KERNELS, batch_norm, make_op
from .supernet import SearchNetwork, source_major


class MixedOp(nn.Module):
    """All 10 candidate ops of one edge: ``forward(x, w [10]) = sum_o w[o] * op_o(x)``.

    Pooling ops are followed by a BatchNorm without affine parameters (DARTS's mixed op).
    """

    def __init__(self, C, stride):
        super().__init__()
        ops = []
        for name in OPS:
            op = make_op(name, C, stride, affine=False)
            ops.append(nn.Sequential(op, batch_norm(C, affine=False)) if name in POOL_OPS else op)
        self.ops = nn.ModuleList(ops)

    def forward(self, x, w):
        out = 0
        for o, op in enumerate(self.ops):
            out = out + w[o] * op(x)
        return out


class ReferenceSearchCell(nn.Module):
    """A search cell with one :class:`MixedOp` per edge, edges in EDGES order."""

    def __init__(self, steps, multiplier, C_pp, C_p, C, reduction, reduction_prev):
        super().__init__()
        self.steps, self.multiplier, self.reduction = steps, multiplier, reduction
        self.pre0, self.pre1 = make_preprocess(CellPlan(reduction, reduction_prev, C_pp, C_p, C), affine=False)
        self.edges = nn.ModuleList(MixedOp(C, 2 if reduction and j < 2 else 1) for j, _ in cell_edges(steps))

    def forward(self, s0, s1, z):
        if self.reduction:
            s0 = s1
        states = [self.pre0(s0), self.pre1(s1)]
        e = 0
        for k in range(self.steps):
            node = 0
            for j in range(k + 2):
                node = node + self.edges[e](states[j], z[e])
                e += 1
            states.append(node)
        return torch.cat(states[-self.multiplier:], 1)


class ReferenceSearchNetwork(nn.Module):
    """Straightforward supernet with the constructor and forward of SearchNetwork.

    ``forward(x [B, in, H, W], z_normal [14, 10], z_reduce [14, 10]) -> [B, num_classes]``.
    """

    def __init__(self, in_channels=1, num_classes=5, C=8, layers=3, steps=STEPS, multiplier=4,
                 stem_multiplier=3):
        super().__init__()
        self.steps = steps
        self.stem = make_stem(in_channels, stem_multiplier * C, affine=False)
        plan, C_p = cell_plan(C, layers, stem_multiplier, multiplier)
        self.cells = nn.ModuleList(ReferenceSearchCell(steps, multiplier, p.C_pp, p.C_p, p.C, p.reduction,
                                                   p.reduction_prev) for p in plan)
        self.classifier = nn.Linear(C_p, num_classes)

    def forward(self, x, z_normal, z_reduce):
        s0 = s1 = self.stem(x)
        for cell in self.cells:
            s0, s1 = s1, cell(s0, s1, z_reduce if cell.reduction else z_normal)
        return self.classifier(s1.mean((2, 3)))


def _edge_param_map(cell, steps):
    """(fused parameter name, source-major position) -> reference parameter name, for one cell."""
    mapping = {}
    order = source_major(steps)
    for p, e in enumerate(order):
        ops = f"edges.{e}.ops"
        for op in SEP_KERNELS:
            i = OPS.index(op)
            for conv in ("dw1", "pw1", "dw2", "pw2"):
                mapping[(f"{op}_{conv}", p)] = f"{ops}.{i}.{conv}.weight"
        for op in DIL_KERNELS:
            i = OPS.index(op)
            mapping[(f"{op}_dw", p)] = f"{ops}.{i}.dw.weight"
            mapping[(f"{op}_pw", p)] = f"{ops}.{i}.pw.weight"
        i = OPS.index("conv_7x1_1x7")
        mapping[("conv_7x1_1x7_w1x7", p)] = f"{ops}.{i}.conv_1x7.weight"
        mapping[("conv_7x1_1x7_w7x1", p)] = f"{ops}.{i}.conv_7x1.weight"
        if cell.reduction and p < 2 * steps:
            i = OPS.index("skip_connect")
            mapping[("skip_connect_fr_a", p)] = f"{ops}.{i}.conv_a.weight"
            mapping[("skip_connect_fr_b", p)] = f"{ops}.{i}.conv_b.weight"
    return mapping


@torch.no_grad()
def copy_parameters(src, dst):
    """Copy every parameter of ``src`` into ``dst`` (reference -> fused or fused -> reference).

    Both networks must have been built with the same configuration. Every parameter of
    both is accounted for; a mismatch raises ValueError.
    """
    if isinstance(src, ReferenceSearchNetwork) and isinstance(dst, SearchNetwork):
        reference, fused, to_fused = src, dst, True
    elif isinstance(src, SearchNetwork) and isinstance(dst, ReferenceSearchNetwork):
        reference, fused, to_fused = dst, src, False
    else:
        raise TypeError("copy_parameters copies between a ReferenceSearchNetwork and a SearchNetwork")
    r_params = dict(reference.named_parameters())
    f_params = dict(fused.named_parameters())
    used_r, used_f = set(), set()
    for name, p in f_params.items():
        if name in r_params:   # stem, preprocessing, classifier: same modules, same names
            if to_fused:
                p.copy_(r_params[name])
            else:
                r_params[name].copy_(p)
            used_r.add(name)
            used_f.add(name)
    if len(reference.cells) != len(fused.cells):
        raise ValueError("the two networks have a different number of cells")
    for c, fcell in enumerate(fused.cells):
        for (fname, pos), nname in _edge_param_map(fcell, fused.steps).items():
            fp = f_params[f"cells.{c}.{fname}"]
            rp = r_params[f"cells.{c}.{nname}"]
            if to_fused:
                fp[pos].copy_(rp)
            else:
                rp.copy_(fp[pos])
            used_r.add(f"cells.{c}.{nname}")
            used_f.add(f"cells.{c}.{fname}")
    missing = (set(r_params) - used_r) | (set(f_params) - used_f)
    if missing:
        raise ValueError(f"parameters not copied: {sorted(missing)}")
    return dst

