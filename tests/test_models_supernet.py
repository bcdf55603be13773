"""The fused search supernet against the reference one (bayesnas/models/reference.py):
same outputs, same gradients w.r.t. parameters, input and z, through double backward."""
import pytest
import torch
import torch.nn.functional as F
from torch.autograd import gradcheck, gradgradcheck
from torch.func import functional_call

from bayesnas.errors import ConfigError
from bayesnas.models import NUM_EDGES, NUM_OPS, OPS, SearchNetwork, edge_batches, source_major
from bayesnas.models._conv import conv2d
from bayesnas.models.macro import reduction_indices
from bayesnas.models.reference import ReferenceSearchNetwork, copy_parameters

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def pair(C=4, layers=3, seed=0, device="cpu"):
    """A float64 (reference, fused) pair with identical parameters."""
    torch.manual_seed(seed)
    reference = ReferenceSearchNetwork(in_channels=2, num_classes=3, C=C, layers=layers).double().to(device)
    fused = SearchNetwork(in_channels=2, num_classes=3, C=C, layers=layers).double().to(device)
    copy_parameters(reference, fused)
    return reference, fused


def inputs(B=4, H=8, seed=1, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, 2, H, H, generator=g, dtype=torch.float64)
    zn = torch.softmax(torch.randn(NUM_EDGES, NUM_OPS, generator=g, dtype=torch.float64), -1)
    zr = torch.softmax(torch.randn(NUM_EDGES, NUM_OPS, generator=g, dtype=torch.float64), -1)
    y = torch.arange(B) % 3
    return [t.to(device) for t in (x, zn, zr, y)]


def reference_grads_in_fused_layout(reference, fused):
    """The reference network's parameter gradients, rearranged as the fused network's."""
    grads_n = {n: p.grad for n, p in reference.named_parameters()}
    saved = {n: p.detach().clone() for n, p in reference.named_parameters()}
    saved_f = {n: p.detach().clone() for n, p in fused.named_parameters()}
    with torch.no_grad():
        for n, p in reference.named_parameters():
            p.copy_(grads_n[n])
    copy_parameters(reference, fused)
    out = {n: p.detach().clone() for n, p in fused.named_parameters()}
    with torch.no_grad():
        for n, p in reference.named_parameters():
            p.copy_(saved[n])
        for n, p in fused.named_parameters():
            p.copy_(saved_f[n])
    return out


def assert_close(a, b, what, tol=1e-9):
    scale = max(b.abs().max().item(), 1e-12)
    err = (a - b).abs().max().item()
    assert err <= tol * max(scale, 1.0), f"{what}: max error {err:.3g} (scale {scale:.3g})"


def test_reduction_positions():
    assert reduction_indices(1) == []
    assert reduction_indices(2) == [1]
    assert reduction_indices(3) == [1, 2]
    assert reduction_indices(5) == [1, 3]
    assert reduction_indices(8) == [2, 5]
    with pytest.raises(ConfigError):
        reduction_indices(0)


def test_edge_batches_cover_every_edge_once():
    order = source_major()
    assert sorted(order) == list(range(NUM_EDGES))
    covered = []
    for sources, m, first in edge_batches():
        covered += order[first:first + len(sources) * m]
    assert covered == order


@pytest.mark.parametrize("C,layers,H,in_ch,classes", [
    (4, 1, 8, 1, 5), (4, 2, 8, 3, 4), (4, 3, 9, 1, 5), (2, 4, 12, 1, 2)])
def test_supernet_shapes(C, layers, H, in_ch, classes):
    net = SearchNetwork(in_channels=in_ch, num_classes=classes, C=C, layers=layers)
    z = torch.full((NUM_EDGES, NUM_OPS), 0.1)
    out = net(torch.randn(3, in_ch, H, H), z, z)
    assert out.shape == (3, classes)
    assert list(net.buffers()) == [] or all(b.dtype == torch.long for b in net.buffers())
    assert not any(isinstance(m, torch.nn.BatchNorm2d) and m.affine for m in net.modules())
    assert len(net.cells) == layers
    assert [i for i, c in enumerate(net.cells) if c.reduction] == reduction_indices(layers)


def test_no_persistent_state_beyond_parameters():
    net = SearchNetwork(C=4, layers=3)
    assert set(net.state_dict()) == {n for n, _ in net.named_parameters()}


def test_bad_z_shape_and_config():
    net = SearchNetwork(C=4, layers=2)
    with pytest.raises(ValueError, match="z_reduce has shape"):
        net(torch.randn(2, 1, 8, 8), torch.zeros(14, 10), torch.zeros(14, 9))
    with pytest.raises(ValueError, match="expected \\[B, 1, H, W\\]"):
        net(torch.randn(2, 3, 8, 8), torch.zeros(14, 10), torch.zeros(14, 10))
    with pytest.raises(ConfigError):
        SearchNetwork(C=0)


def test_fused_equals_reference_outputs_and_gradients():
    reference, fused = pair()
    x, zn, zr, y = inputs(H=7)  # odd size: reductions 7 -> 4 -> 2
    results = []
    for net in (reference, fused):
        xx, n_, r_ = (t.clone().requires_grad_() for t in (x, zn, zr))
        out = net(xx, n_, r_)
        F.cross_entropy(out, y).backward()
        results.append((out.detach(), xx.grad, n_.grad, r_.grad))
    for what, a, b in zip(("logits", "d/dx", "d/dz_normal", "d/dz_reduce"), results[1], results[0], strict=True):
        assert_close(a, b, what)
    expected = reference_grads_in_fused_layout(reference, fused)
    for name, p in fused.named_parameters():
        assert_close(p.grad, expected[name], f"d/d{name}")


@pytest.mark.parametrize("op", range(NUM_OPS), ids=OPS)
def test_one_hot_z_equals_reference(op):
    reference, fused = pair(C=2, layers=3, seed=op)
    x, _, _, _ = inputs(H=8)
    z = torch.zeros(NUM_EDGES, NUM_OPS, dtype=torch.float64)
    z[:, op] = 1.0
    with torch.no_grad():
        assert_close(fused(x, z, z), reference(x, z, z), OPS[op])


def maml_step(net, x, zn, zr, y):
    """One second-order inner step; returns d(query loss)/d(params, x, z_normal, z_reduce)."""
    params = dict(net.named_parameters())
    loss = F.cross_entropy(functional_call(net, params, (x, zn, zr)), y)
    grads = torch.autograd.grad(loss, list(params.values()), create_graph=True)
    adapted = {k: p - 0.5 * g for (k, p), g in zip(params.items(), grads, strict=True)}
    outer = F.cross_entropy(functional_call(net, adapted, (x.flip(0), zn, zr)), y)
    outer.backward()
    return outer.detach()


def test_double_backward_equals_reference():
    reference, fused = pair(C=2, layers=2)
    x, zn, zr, y = inputs(B=4, H=6)
    results = []
    for net in (reference, fused):
        xx, n_, r_ = (t.clone().requires_grad_() for t in (x, zn, zr))
        loss = maml_step(net, xx, n_, r_, y)
        results.append((loss, xx.grad, n_.grad, r_.grad))
    for what, a, b in zip(("loss", "d/dx", "d/dz_normal", "d/dz_reduce"), results[1], results[0], strict=True):
        assert_close(a, b, what)
    expected = reference_grads_in_fused_layout(reference, fused)
    for name, p in fused.named_parameters():
        assert_close(p.grad, expected[name], f"d/d{name} (second order)")


def test_functional_call_with_substituted_params():
    torch.manual_seed(0)
    net = SearchNetwork(C=2, layers=2).double()
    x, zn, zr, _ = inputs(H=6)
    x = x[:, :1]
    params = {k: v.detach() + 0.01 * torch.randn_like(v) for k, v in net.named_parameters()}
    out = functional_call(net, params, (x, zn, zr))
    with torch.no_grad():
        for k, p in net.named_parameters():
            p.copy_(params[k])
    assert torch.allclose(out, net(x, zn, zr), atol=1e-12)


def test_vmap_over_tasks_matches_loop():
    torch.manual_seed(0)
    net = SearchNetwork(C=2, layers=2)
    params = {k: torch.stack([v.detach(), v.detach() + 0.05 * torch.randn_like(v)])
              for k, v in net.named_parameters()}
    x = torch.randn(2, 3, 1, 6, 6)
    z = torch.softmax(torch.randn(2, 2, NUM_EDGES, NUM_OPS), -1)

    def task(p, xt, zt):
        return functional_call(net, p, (xt, zt[0], zt[1]))

    batched = torch.func.vmap(task)(params, x, z)
    for t in range(2):
        single = task({k: v[t] for k, v in params.items()}, x[t], z[t])
        assert torch.allclose(batched[t], single, atol=1e-5)


@pytest.mark.parametrize("stride,dilation,groups,k,pad", [
    (1, 1, 4, (3, 3), None), (2, 2, 4, (3, 3), None), (2, 1, 2, (5, 5), None),
    # stride 1 takes the input gradient from a forward convolution with a flipped kernel:
    (1, 2, 4, (5, 5), None),          # dilated depthwise with a channel multiplier
    (1, 1, 2, (1, 7), None),          # asymmetric kernel, 2 input channels per group
    (1, 1, 1, (3, 3), (0, 0)),        # no padding (the flipped call pads k - 1)
    (1, 1, 4, (3, 3), (2, 2)),        # padding beyond k - 1: the backward primitive
])
def test_grouped_conv_derivatives(stride, dilation, groups, k, pad):
    torch.manual_seed(0)
    x = torch.randn(1, 4, 5, 6, dtype=torch.float64, requires_grad=True)
    w = torch.randn(8, 4 // groups, *k, dtype=torch.float64, requires_grad=True)
    pad = pad or tuple(dilation * (kk - 1) // 2 for kk in k)

    def f(x, w):
        return conv2d(x, w, stride, pad, dilation, groups)

    assert torch.allclose(f(x, w), F.conv2d(x, w, None, stride, pad, dilation, groups))
    gy = torch.randn_like(f(x, w))
    got = torch.autograd.grad(f(x, w), (x, w), gy)
    want = torch.autograd.grad(F.conv2d(x, w, None, stride, pad, dilation, groups), (x, w), gy)
    assert all(torch.allclose(a, b) for a, b in zip(got, want, strict=True))
    assert gradcheck(f, (x, w))
    assert gradgradcheck(f, (x, w))


@CUDA
def test_cuda_fused_equals_reference_and_second_order():
    reference, fused = pair(C=2, layers=3, device="cuda")
    x, zn, zr, y = inputs(H=8, device="cuda")
    with torch.no_grad():
        assert_close(fused(x, zn, zr), reference(x, zn, zr), "cuda logits", tol=1e-8)
    xx, n_, r_ = (t.clone().requires_grad_() for t in (x, zn, zr))
    maml_step(fused, xx, n_, r_, y)
    assert torch.isfinite(n_.grad).all() and n_.grad.device.type == "cuda"
    net = SearchNetwork(C=4, layers=3).cuda()
    out = net(torch.randn(5, 1, 12, 12, device="cuda"), zn.float(), zr.float())
    assert out.shape == (5, 5) and out.device.type == "cuda"


@pytest.mark.slow
def test_tasks_as_a_batch_equal_one_call_per_task_through_second_order():
    """T tasks in one call (task-major channels, T-fold groups) == T separate calls, exactly
    in float64, for the outputs and for the gradients of a gradient (theta and z)."""
    from torch.func import functional_call


    torch.manual_seed(0)
    net = SearchNetwork(1, 5, C=2, layers=3).double()
    T = 3
    layout, theta = task_weights(net, T)
    theta.requires_grad_()
    x = torch.rand(T, 4, 1, 12, 12, dtype=torch.float64)
    zn = torch.softmax(torch.randn(T, 14, 10, dtype=torch.float64), -1).requires_grad_()
    zr = torch.softmax(torch.randn(T, 14, 10, dtype=torch.float64), -1).requires_grad_()

    def batched():
        return functional_call(net, layout.unflatten(theta), (x, zn, zr))

    def looped():
        return torch.stack([functional_call(net, layout.unflatten(theta[t]), (x[t], zn[t], zr[t])) for t in range(T)])

    def second_order(out):
        g, = torch.autograd.grad(out.pow(2).sum(), theta, create_graph=True)
        return torch.autograd.grad(g.pow(2).sum(), [theta, zn, zr])

    out_b, out_l = batched(), looped()
    assert out_b.shape == (T, 4, 5)
    assert torch.allclose(out_b, out_l, rtol=1e-12, atol=1e-12)
    for gb, gl in zip(second_order(batched()), second_order(looped()), strict=True):
        assert gl.abs().sum() > 0
        assert torch.allclose(gb, gl, rtol=1e-10, atol=1e-12)
    with pytest.raises(ValueError, match="substitute"):
        net(x, zn, zr)  # T tasks but the module's own (unbatched) parameters


def one_edge(op):
    """z with weight 1 on ``op`` of edge 0 (c_{k-2} -> n0) and nothing anywhere else."""
    z = torch.zeros(NUM_EDGES, NUM_OPS, dtype=torch.float64)
    z[0, OPS.index(op)] = 1.0
    return z


def cell_output(net, index, forward):
    """The output of ``net.cells[index]`` during ``forward()``."""
    seen = []
    handle = net.cells[index].register_forward_hook(lambda module, inputs, output: seen.append(output))
    try:
        with torch.no_grad():
            forward()
    finally:
        handle.remove()
    return seen[0]


@pytest.mark.parametrize("op,reduction", [("max_pool_3x3", False), ("avg_pool_3x3", True)])
def test_pooling_edge_is_batch_normalised_per_task(op, reduction):
    """A pooling edge's output has zero mean and unit variance per channel over each task's
    own batch (DARTS's mixed op), in the fused supernet with 2 tasks and in the reference."""
    from bayesnas.models import ParamLayout

    reference, fused = pair(C=2, layers=3)
    index = 1 if reduction else 0
    assert fused.cells[index].reduction == reduction
    C = fused.cells[index].C
    other = torch.full((NUM_EDGES, NUM_OPS), 0.1, dtype=torch.float64)
    zn, zr = (other, one_edge(op)) if reduction else (one_edge(op), other)
    T, B = 2, 6
    g = torch.Generator().manual_seed(0)
    # two tasks with different images and weights: statistics pooled across the tasks would
    # not centre each task exactly
    x = torch.stack([torch.randn(B, 2, 8, 8, generator=g, dtype=torch.float64),
                     torch.rand(B, 2, 8, 8, generator=g, dtype=torch.float64) ** 3])
    layout = ParamLayout.from_module(fused)
    theta = layout.flatten(fused).detach() + 0.3 * torch.randn(T, layout.numel, generator=g, dtype=torch.float64)
    fused_out = cell_output(fused, index, lambda: functional_call(
        fused, layout.unflatten(theta), (x, zn.expand(T, -1, -1), zr.expand(T, -1, -1))))
    reference_out = cell_output(reference, index, lambda: reference(x[0], zn, zr))
    for y in [fused_out[:, t * 4 * C:(t + 1) * 4 * C] for t in range(T)] + [reference_out]:
        node0, rest = y[:, :C], y[:, C:]
        assert torch.allclose(node0.mean((0, 2, 3)), torch.zeros(C, dtype=torch.float64), atol=1e-12)
        assert torch.allclose(node0.var((0, 2, 3), unbiased=False), torch.ones(C, dtype=torch.float64), atol=1e-3)
        assert not rest.any()  # only edge 0 carries weight


def test_conv_7x1_1x7_on_a_reduction_edge_strides_columns_then_rows():
    """With an identity 1x7 kernel and a 7x1 kernel reading the row below its centre, a
    strided edge gives r[2h + 1, 2w] only if the 1x7 convolution strides (1, 2) and the
    7x1 one (2, 1); striding both axes in the 1x7 one would give r[2h + 2, 2w]."""
    torch.manual_seed(0)
    net = SearchNetwork(in_channels=2, num_classes=3, C=2, layers=3).double()
    cell = net.cells[1]
    assert cell.reduction
    C = cell.C
    with torch.no_grad():
        cell.conv_7x1_1x7_w1x7.zero_()
        cell.conv_7x1_1x7_w7x1.zero_()
        for c in range(C):
            cell.conv_7x1_1x7_w1x7[:, c, c, 0, 3] = 1.0
            cell.conv_7x1_1x7_w7x1[:, c, c, 4, 0] = 1.0
    s1 = torch.randn(4, cell.pre1.conv.in_channels, 7, 9, dtype=torch.float64)
    mix = net.mixing_matrices(one_edge("conv_7x1_1x7")[None], reduction=True)
    with torch.no_grad():
        out = cell(s1, s1, mix)
        r = F.relu(cell.pre0(s1))  # the edge's source after the op's ReLU
    assert out.shape == (4, 4 * C, 4, 5)
    expected = F.batch_norm(F.pad(r, (0, 0, 0, 1))[:, :, 1::2, ::2], None, None, training=True)
    assert_close(out[:, :C], expected, "conv_7x1_1x7 edge", tol=1e-12)


def test_reduction_cell_reads_two_copies_of_the_previous_output():
    """Paper appendix B: a reduction cell's inputs are both the previous cell's output, so
    what two cells back held cannot matter (NaNs there leave the output unchanged), while
    a normal cell reads it."""
    from bayesnas.models import NetworkFromGenotype, named_genotype

    reference, fused = pair(C=2, layers=3)
    x, zn, zr, _ = inputs(H=8)
    fixed = NetworkFromGenotype(named_genotype("darts_v2"), in_channels=2, num_classes=3, C=2, layers=3).double()
    for net, args in ((fused, (x, zn, zr)), (reference, (x, zn, zr)), (fixed, (x,))):
        seen = {}
        hooks = [cell.register_forward_pre_hook(lambda module, cell_args, i=i, seen=seen: seen.setdefault(i, cell_args))
                 for i, cell in enumerate(net.cells)]
        with torch.no_grad():
            net(*args)
        for h in hooks:
            h.remove()
        with torch.no_grad():
            for i, cell in enumerate(net.cells):
                s0, s1, *rest = seen[i]
                out = cell(torch.full_like(s0, float("nan")), s1, *rest)
                if cell.reduction:
                    assert torch.isfinite(out).all()
                    assert torch.equal(out, cell(s1, s1, *rest)), type(net).__name__
                else:
                    assert torch.isnan(out).all()
    assert [c.reduction for c in fused.cells] == [False, True, True]


def test_sparse_edges_reads_one_nonzero_op_per_row_the_same_in_every_task():
    from bayesnas.models import sparse_edges

    z = torch.zeros(NUM_EDGES, NUM_OPS)
    z[:, OPS.index("none")] = 1.0
    z[3] = 0.0
    z[3, OPS.index("sep_conv_5x5")] = 0.7  # any value: it is the multiplier
    z[5, OPS.index("skip_connect")] = 1.0  # with a weight on none too: none contributes nothing
    assert sparse_edges(z) == ((3, OPS.index("sep_conv_5x5")), (5, OPS.index("skip_connect")))
    assert sparse_edges(z.expand(3, -1, -1)) == sparse_edges(z)
    two = z.clone()
    two[3, OPS.index("max_pool_3x3")] = 0.1  # a mixture on edge 3: both ops
    assert sparse_edges(two) == ((3, OPS.index("max_pool_3x3")), (3, OPS.index("sep_conv_5x5")),
                                 (5, OPS.index("skip_connect")))
    assert sparse_edges(torch.stack([z, two])) is None
    assert sparse_edges(torch.full((NUM_EDGES, NUM_OPS), 0.1)) is None  # 126 pairs: the fused path is faster
    other = z.clone()
    other[3] = 0.0
    other[3, OPS.index("dil_conv_3x3")] = 1.0
    assert sparse_edges(torch.stack([z, other])) is None  # a different cell per task: the fused path
    assert sparse_edges(torch.zeros(2, NUM_EDGES, NUM_OPS)) == ()


def task_weights(net, T):
    """The float64 net's parameter layout and the flat weights of T tasks near its own, ``[T, D]``."""
    from bayesnas.models import ParamLayout

    layout = ParamLayout.from_module(net)
    return layout, layout.flatten(net).detach() + 0.05 * torch.randn(T, layout.numel, dtype=torch.float64)


def discrete_z(op, seed, T):
    """``[T, 14, 10]``: every edge one-hot on ``op`` but a few edges on none and one on another op;
    the values are not all 1 (they are the multipliers)."""
    g = torch.Generator().manual_seed(seed)
    z = torch.zeros(NUM_EDGES, NUM_OPS, dtype=torch.float64)
    ops = torch.full((NUM_EDGES,), op)
    ops[torch.randperm(NUM_EDGES, generator=g)[:4]] = 0
    ops[int(torch.randint(NUM_EDGES, (1,), generator=g))] = int(torch.randint(1, NUM_OPS, (1,), generator=g))
    z[torch.arange(NUM_EDGES), ops] = 0.5 + torch.rand(NUM_EDGES, generator=g, dtype=torch.float64)
    return z.expand(T, -1, -1).clone()


def discrete_against_fused(net, theta, layout, x, zn, zr, second_order=False):
    """(output, d/dtheta, d/dz_normal, d/dz_reduce) of the fused and of the discrete path."""
    results = []
    for discrete in (False, True):
        z = [t.clone().requires_grad_() for t in (zn, zr)]
        out = functional_call(net, layout.unflatten(theta), (x, *z), {"discrete": discrete})
        loss = out.pow(2).sum() + out.sum()
        if second_order:
            g, = torch.autograd.grad(loss, theta, create_graph=True)
            loss = g.pow(2).sum()
        results.append((out.detach(), *torch.autograd.grad(loss, [theta, *z])))
    return results


@pytest.mark.parametrize("op", range(1, NUM_OPS), ids=OPS[1:])
@pytest.mark.parametrize("T", [1, 3])
def test_discrete_path_equals_fused_for_every_op(op, T, monkeypatch):
    """One-hot edge weights (normal and reduction cells, every op, with skipped edges and values that
    are not 1): the sparse path's logits and gradients w.r.t. the parameters equal the fused path's
    in float64, and so do the gradients w.r.t. the kept entries of z (the others are 0 there)."""
    from bayesnas.models import SearchCell

    calls = []
    original = SearchCell.forward_discrete
    monkeypatch.setattr(SearchCell, "forward_discrete", lambda self, *a: calls.append(1) or original(self, *a))
    torch.manual_seed(op)
    net = SearchNetwork(in_channels=2, num_classes=3, C=3, layers=3).double()  # odd C: uneven factorized reduce
    layout, theta = task_weights(net, T)
    theta.requires_grad_()
    x = torch.randn(T, 4, 2, 7, 7, dtype=torch.float64)  # odd size: reductions 7 -> 4 -> 2
    zn, zr = discrete_z(op, op, T), discrete_z(op, 100 + op, T)
    fused, sparse = discrete_against_fused(net, theta, layout, x, zn, zr)
    assert len(calls) == 3  # every cell took the sparse path
    assert_close(sparse[0], fused[0], "logits", tol=1e-12)
    assert_close(sparse[1], fused[1], "d/dtheta", tol=1e-10)
    assert fused[1].abs().sum() > 0
    for z, a, b, what in ((zn, sparse[2], fused[2], "d/dz_normal"), (zr, sparse[3], fused[3], "d/dz_reduce")):
        kept = z.ne(0)
        kept[..., OPS.index("none")] = False
        assert_close(a[kept], b[kept], what, tol=1e-10)
        assert not a[~kept].any()


def test_partly_decided_cells_equal_fused():
    """Mixtures on 3 edges of each cell type (evidence's op decisions), one-hot elsewhere: every nonzero
    (edge, op) pair computed on its own gives the fused logits and gradients, z's included."""
    from bayesnas.models import SearchNetwork, sparse_edges

    torch.manual_seed(0)
    net = SearchNetwork(in_channels=2, num_classes=3, C=2, layers=3).double()
    T = 2
    layout, theta = task_weights(net, T)
    theta.requires_grad_()
    x = torch.randn(T, 4, 2, 8, 8, dtype=torch.float64)
    zs = []
    for seed, rows in ((1, [0, 6, 13]), (2, [1, 4, 8])):  # rows 0, 1 leave the inputs: strided in a reduction
        z = discrete_z(OPS.index("sep_conv_3x3"), seed, T)
        z[:, rows] = torch.softmax(torch.randn(T, len(rows), NUM_OPS, dtype=torch.float64), -1)
        z[1, rows] = z[1, rows].flip(-1)  # the same nonzero entries, other values
        zs.append(z)
    assert all(sparse_edges(z) is not None for z in zs)
    fused, sparse = discrete_against_fused(net, theta, layout, x, *zs)
    assert_close(sparse[0], fused[0], "logits", tol=1e-12)
    assert_close(sparse[1], fused[1], "d/dtheta", tol=1e-10)
    for z, a, b, what in ((zs[0], sparse[2], fused[2], "d/dz_normal"), (zs[1], sparse[3], fused[3], "d/dz_reduce")):
        kept = z.ne(0)
        kept[..., OPS.index("none")] = False
        assert 3 * 9 < int(kept[0].sum()) <= 40
        assert_close(a[kept], b[kept], what, tol=1e-10)


def test_discrete_cells_second_order_and_fallbacks(monkeypatch):
    """DARTS_V2 on 3 tasks through a gradient of a gradient (what the guide's steps differentiate); inside
    discrete_cells() the sparse path is the default, and z that does not qualify takes the fused path."""
    from bayesnas.analysis.score import cell_edge_weights
    from bayesnas.models import DARTS_V2, SearchCell, discrete_cells

    calls = []
    original = SearchCell.forward_discrete
    monkeypatch.setattr(SearchCell, "forward_discrete", lambda self, *a: calls.append(1) or original(self, *a))
    torch.manual_seed(0)
    net = SearchNetwork(in_channels=2, num_classes=3, C=2, layers=3).double()
    T = 3
    layout, theta = task_weights(net, T)
    theta.requires_grad_()
    x = torch.randn(T, 4, 2, 8, 8, dtype=torch.float64)
    zn, zr = (z.double().expand(T, -1, -1) for z in cell_edge_weights(DARTS_V2))
    fused, sparse = discrete_against_fused(net, theta, layout, x, zn, zr, second_order=True)
    assert len(calls) == 3
    assert_close(sparse[0], fused[0], "logits", tol=1e-12)
    assert_close(sparse[1], fused[1], "d/dtheta (second order)", tol=1e-10)

    params = layout.unflatten(theta.detach())
    mixed = torch.softmax(torch.randn(T, NUM_EDGES, NUM_OPS, dtype=torch.float64), -1)
    per_task = zr.clone()
    per_task[1, 0] = per_task[1, 0].roll(1)  # task 1's reduction cell differs
    calls.clear()
    with discrete_cells():
        out = functional_call(net, params, (x, zn, zr))
        assert len(calls) == 3
        functional_call(net, params, (x, zn, mixed))
        functional_call(net, params, (x, zn, per_task))
        assert len(calls) == 3 + 1 + 1  # the normal cell only
        functional_call(net, params, (x, zn, zr), {"discrete": False})
        assert len(calls) == 5
    functional_call(net, params, (x, zn, zr))  # outside: z is not read
    assert len(calls) == 5
    assert_close(out, fused[0], "logits in discrete_cells()", tol=1e-12)
    grads = []
    for discrete in (True, False):  # one task, the module's own parameters
        out = net(x[0], zn[0], zr[0], discrete=discrete)
        params = list(net.parameters())
        # a parameter tensor no kept edge reads is unused (None) on the sparse path: zero on the fused one
        g = torch.autograd.grad(out.pow(2).sum(), params, allow_unused=True)
        grads.append((out.detach(), *(torch.zeros_like(p) if d is None else d for p, d in zip(params, g, strict=True))))
    for a, b in zip(*grads, strict=True):
        assert_close(a, b, "one task", tol=1e-10)


def per_image_z(B, seed):
    """Edge weights ``[B, 14, 10]``, a different softmax per image (float64)."""
    g = torch.Generator().manual_seed(seed)
    return torch.softmax(torch.randn(B, NUM_EDGES, NUM_OPS, generator=g, dtype=torch.float64), -1)


def as_reference_weights(z):
    """Per-image weights ``[B, 14, 10]`` laid out for the reference supernet: its mixed op computes
    ``w[o] * op_o(x)`` with ``w = z[e]``, so ``[14, 10, B, 1, 1, 1]`` gives image b its own ``w[o]``."""
    return z.permute(1, 2, 0)[..., None, None, None]


def test_per_image_z_equals_the_reference_mixing_each_image_with_its_own_weights():
    """z ``[B, 14, 10]``: each image's nodes mix the batch's op outputs with its own weights
    (the reference supernet's mixed ops, broadcast over the batch, compute that independently)."""
    reference, fused = pair()
    x, _, _, y = inputs(H=7)
    zn, zr = per_image_z(4, 2), per_image_z(4, 3)
    results = []
    for net, layout in ((reference, as_reference_weights), (fused, lambda z: z)):
        n_, r_ = (t.clone().requires_grad_() for t in (zn, zr))
        out = net(x, layout(n_), layout(r_))
        F.cross_entropy(out, y).backward()
        results.append((out.detach(), n_.grad, r_.grad))
    for what, a, b in zip(("logits", "d/dz_normal", "d/dz_reduce"), results[1], results[0], strict=True):
        assert b.abs().max() > 0
        assert_close(a, b, what)
    assert not torch.allclose(results[1][0], fused(x, zn[0], zr[0]))  # the images' weights do matter


def test_the_same_z_for_every_image_equals_the_per_task_forward():
    _, fused = pair()
    x, zn, zr, _ = inputs(H=8)
    B = x.shape[0]
    per_task = fused(x, zn, zr)
    assert torch.allclose(fused(x, zn.expand(B, -1, -1), zr.expand(B, -1, -1)), per_task, rtol=0, atol=1e-10)
    assert torch.allclose(fused(x, zn.expand(B, -1, -1), zr), per_task, rtol=0, atol=1e-10)  # one cell type per image
    with pytest.raises(ValueError, match=r"z_normal has shape \(3, 14, 10\), expected \(14, 10\) .* or \(4, 14, 10\)"):
        fused(x, zn.expand(3, -1, -1), zr)


def test_per_image_z_of_tasks_as_a_batch_equals_one_call_per_task_and_never_takes_the_sparse_path():

    torch.manual_seed(0)
    net = SearchNetwork(1, 5, C=2, layers=3).double()
    T, B = 2, 3
    layout, theta = task_weights(net, T)
    x = torch.rand(T, B, 1, 8, 8, dtype=torch.float64)
    zn = per_image_z(T * B, 4).view(T, B, NUM_EDGES, NUM_OPS)
    zr = per_image_z(T * B, 5).view(T, B, NUM_EDGES, NUM_OPS)
    batched = functional_call(net, layout.unflatten(theta), (x, zn, zr))
    looped = torch.stack([functional_call(net, layout.unflatten(theta[t]), (x[t], zn[t], zr[t])) for t in range(T)])
    assert batched.shape == (T, B, 5)
    assert torch.allclose(batched, looped, rtol=1e-12, atol=1e-12)
    one_hot = torch.zeros(T, B, NUM_EDGES, NUM_OPS, dtype=torch.float64)
    one_hot[..., OPS.index("skip_connect")] = 1.0  # a discrete cell in every image: still the fused path
    fused_out = functional_call(net, layout.unflatten(theta), (x, one_hot, one_hot), {"discrete": False})
    assert torch.equal(functional_call(net, layout.unflatten(theta), (x, one_hot, one_hot), {"discrete": True}),
                       fused_out)
