"""Many tasks or runs per call through ``torch.func`` (vmap): is it right, and does it pay on this machine?

    python benchmarks/bench_stacking.py --json benchmarks/results/stacking_cpu.json

Issue 13 asks for independent runs (seeds) and test tasks to be computed together, as one
stacked model (``torch.func.stack_module_state`` + ``vmap``). Before building that into
retraining, this measures the two things that decide it, in one run:

* ``correctness``: the second-order MAML meta-gradient (one inner step, 2 tasks, float64)
  of a small conv net with and without a batch-statistics BatchNorm, computed by
  ``torch.func.grad`` over ``vmap`` over ``torch.func.grad`` and by the autograd loop that
  ``bayesnas.training.retrain.maml_loss`` uses, each against central finite differences on
  a few weight coordinates.
* ``speed`` (float32, ``--threads``): on the committed comparison's networks at their
  matched widths, 5-way 1-shot, 5 queries:
  - the second-order meta-gradient of ``--tasks`` tasks: the task loop (``maml_loss``) vs
    ``vmap`` over tasks;
  - ``--seeds`` independently initialised copies of the network: the sequential meta-gradients
    vs one ``vmap`` over ``stack_module_state``;
  - first-order test-time adaptation (3 steps) of 20 tasks: the task loop vs ``vmap``;
  - Conv-4 only, the same stacked seeds without ``torch.func``: every (seed, task) pair one
    channel group of one network (grouped convolutions, per-channel BatchNorm, a batched
    linear layer), second order through plain autograd, with PyTorch's convolution
    (``grouped_torch``) and with bayesnas's whole-call convolution derivatives
    (``grouped_bayesnas``, bayesnas/models/_conv.py); its largest gradient difference from
    the sequential runs is recorded.
  Variants alternate, medians of ``--repeats``.
"""
import argparse
import copy
import json
import os
import platform
import statistics
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.func import functional_call, grad, stack_module_state, vmap

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from bayesnas.data import TaskSampler, open_data  # noqa: E402
from bayesnas.fileio import write_json  # noqa: E402
from bayesnas.models import build_network  # noqa: E402
from bayesnas.models._conv import conv2d as whole_call_conv2d  # noqa: E402
from bayesnas.training.retrain import maml_loss, meta_parameters  # noqa: E402

LR = 0.4
NETWORKS = {"darts_v2": 20, "conv4": 25}  # widths matched to ~16.9k parameters (compare_omniglot.json)


def _support_loss(net):
    return lambda p, x, y: F.cross_entropy(functional_call(net, p, (x,)), y)


def func_meta_loss(net, params, sx, sy, qx, qy, steps=1):
    """Mean query loss after ``steps`` inner steps per task: vmap over tasks of torch.func.grad."""
    inner = grad(_support_loss(net))

    def one(a, b, c, d):
        p = params
        for _ in range(steps):
            g = inner(p, a, b)
            p = {k: p[k] - LR * g[k] for k in p}
        return _support_loss(net)(p, c, d)

    return vmap(one)(sx, sy, qx, qy).mean()


def loop_meta_loss(net, params, sx, sy, qx, qy):
    batch = argparse.Namespace(support_x=sx, support_y=sy, query_x=qx, query_y=qy)
    return maml_loss(net, params, batch, 1, LR)[0]


def grouped_conv4(params, x, groups, conv):
    """Conv-4 over ``groups`` weight sets at once.

    params: name -> ``[G, *shape]``; x ``[G, B, C, H, W]`` -> ``[G, B, n]``.
    """
    B = x.shape[1]
    h = x.transpose(0, 1).reshape(B, groups * x.shape[2], *x.shape[3:])
    for i in range(4):
        w = params[f"features.{4 * i}.weight"]
        h = conv(h, w.reshape(-1, *w.shape[2:]), padding=1, groups=groups)
        h = F.batch_norm(h, None, None, params[f"features.{4 * i + 1}.weight"].reshape(-1),
                         params[f"features.{4 * i + 1}.bias"].reshape(-1), training=True)
        h = F.max_pool2d(F.relu(h), 2)
    h = h.reshape(B, groups, -1)
    return torch.einsum("bgf,gnf->gbn", h, params["classifier.weight"]) + params["classifier.bias"].unsqueeze(1)


def grouped_meta_loss(stacked, sx, sy, qx, qy, conv):
    """Sum over seeds of each seed's MAML loss (one inner step); ``sx [S, T, n, C, H, W]``."""
    S, T = sx.shape[:2]
    G = S * T

    def mean_ce(logits, y):
        losses = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1), reduction="none")
        return losses.view(G, -1).mean(1)

    fast = {k: v.unsqueeze(1).expand(S, T, *v.shape[1:]).reshape(G, *v.shape[1:]) for k, v in stacked.items()}
    inner = mean_ce(grouped_conv4(fast, sx.reshape(G, *sx.shape[2:]), G, conv), sy).sum()
    grads = torch.autograd.grad(inner, list(fast.values()), create_graph=True)
    fast = {k: v - LR * g for (k, v), g in zip(fast.items(), grads, strict=True)}
    return mean_ce(grouped_conv4(fast, qx.reshape(G, *qx.shape[2:]), G, conv), qy).view(S, T).mean(1).sum()


def correctness():
    rows = []
    g = torch.Generator().manual_seed(0)
    sx, qx = (torch.randn(2, 6, 1, 6, 6, dtype=torch.float64, generator=g) for _ in range(2))
    sy, qy = (torch.randint(0, 3, (2, 6), generator=g) for _ in range(2))
    for with_bn in (False, True):
        torch.manual_seed(0)
        norm = [nn.BatchNorm2d(4, track_running_stats=False)] if with_bn else []
        net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), *norm, nn.ReLU(), nn.Flatten(), nn.Linear(144, 3)).double()
        params = dict(net.named_parameters())
        by_func = grad(lambda p: func_meta_loss(net, p, sx, sy, qx, qy))({k: v.detach() for k, v in params.items()})
        by_loop = dict(zip(params, torch.autograd.grad(loop_meta_loss(net, params, sx, sy, qx, qy),
                                                       list(params.values())), strict=True))
        checks = []
        for idx in [(0, 0, 1, 1), (1, 0, 2, 0), (3, 0, 0, 2)]:
            def at(delta):
                p = {k: v.detach().clone() for k, v in params.items()}
                p["0.weight"][idx] += delta
                p = {k: v.requires_grad_(True) for k, v in p.items()}
                return loop_meta_loss(net, p, sx, sy, qx, qy).item()
            fd = (at(1e-6) - at(-1e-6)) / 2e-6
            checks.append({"coordinate": list(idx), "finite_difference": fd,
                           "autograd_loop": by_loop["0.weight"][idx].item(),
                           "torch_func": by_func["0.weight"][idx].item()})
        rows.append({"batch_norm": with_bn, "checks": checks,
                     "max_abs_func_minus_loop": max((by_func[k] - by_loop[k]).abs().max().item() for k in params),
                     "max_abs_loop_minus_fd": max(abs(c["autograd_loop"] - c["finite_difference"]) for c in checks),
                     "max_abs_func_minus_fd": max(abs(c["torch_func"] - c["finite_difference"]) for c in checks)})
        print(json.dumps(rows[-1]))
    return rows


def _median_times(fns, repeats):
    times = {name: [] for name in fns}
    for r in range(repeats + 1):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn(r)
            if r:  # the first round warms up
                times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(v) for name, v in times.items()}


def speed(args, data):
    rows = []
    sampler = TaskSampler(data.split("train"), 5, 1, 5, seed=0)
    for name, width in NETWORKS.items():
        def build(seed):
            torch.manual_seed(seed)
            return build_network(name, in_channels=1, num_classes=5, image_size=28, C=width, layers=2, hidden=width)

        net = build(0)
        params = meta_parameters(net)
        plist = list(params.values())

        def batch(r, tasks):
            b = sampler.batch(list(range(r * tasks, (r + 1) * tasks)))
            return b.support_x, b.support_y, b.query_x, b.query_y

        tasks = _median_times({
            "loop": lambda r: torch.autograd.grad(loop_meta_loss(net, params, *batch(r, args.tasks)), plist),
            "vmap": lambda r: grad(lambda p: func_meta_loss(net, p, *batch(r, args.tasks)))(
                {k: v.detach() for k, v in params.items()}),
        }, args.repeats)

        nets = [build(s) for s in range(args.seeds)]
        stacked, _ = stack_module_state(nets)
        base = copy.deepcopy(nets[0]).to("meta")

        def sequential(r):
            for n in nets:
                p = meta_parameters(n)
                torch.autograd.grad(loop_meta_loss(n, p, *batch(r, args.tasks)), list(p.values()))

        def seeds_vmap(r):
            sx, sy, qx, qy = batch(r, args.tasks)
            per_seed = lambda p: func_meta_loss(base, p, sx, sy, qx, qy)  # noqa: E731
            grad(lambda p: vmap(per_seed)(p).sum())(stacked)

        variants = {"sequential": sequential, "vmap": seeds_vmap}
        grouped_error = {}
        if name == "conv4":
            leaves = {k: torch.stack([dict(n.named_parameters())[k].detach() for n in nets]).requires_grad_(True)
                      for k in params}

            def seed_batches(r):
                parts = [batch(r * args.seeds + s, args.tasks) for s in range(args.seeds)]
                return [torch.stack([p[i] for p in parts]) for i in range(4)]

            def grouped(conv):
                return lambda r: torch.autograd.grad(grouped_meta_loss(leaves, *seed_batches(r), conv),
                                                     list(leaves.values()))

            variants["grouped_torch"] = grouped(lambda x, w, padding, groups: F.conv2d(x, w, None, 1, padding, 1,
                                                                                       groups))
            variants["grouped_bayesnas"] = grouped(whole_call_conv2d)
            parts = [batch(s, args.tasks) for s in range(args.seeds)]
            for conv_name in ("grouped_torch", "grouped_bayesnas"):
                got = variants[conv_name](0)
                worst = 0.0
                for s, (n, part) in enumerate(zip(nets, parts, strict=True)):
                    p = meta_parameters(n)
                    ref = torch.autograd.grad(loop_meta_loss(n, p, *part), list(p.values()))
                    worst = max(worst, max((g[s] - r).abs().max().item() for g, r in zip(got, ref, strict=True)))
                grouped_error[conv_name] = worst
        seeds = _median_times(variants, args.repeats)

        def adapt_loop(r):
            start = {k: v.detach().requires_grad_(True) for k, v in params.items()}
            sx, sy, qx, qy = batch(r, 20)
            for t in range(20):
                p = start
                for _ in range(3):
                    gr = torch.autograd.grad(_support_loss(net)(p, sx[t], sy[t]), list(p.values()))
                    p = {k: (v - LR * gi).detach().requires_grad_(True)
                         for (k, v), gi in zip(p.items(), gr, strict=True)}
                with torch.no_grad():
                    functional_call(net, p, (qx[t],))

        def adapt_vmap(r):
            start = {k: v.detach() for k, v in params.items()}
            sx, sy, qx, qy = batch(r, 20)
            inner = grad(_support_loss(net))

            def one(a, b, c):
                p = start
                for _ in range(3):
                    g = inner(p, a, b)
                    p = {k: p[k] - LR * g[k] for k in p}
                return functional_call(net, p, (c,))

            with torch.no_grad():
                vmap(one)(sx, sy, qx)

        adapt = _median_times({"loop": adapt_loop, "vmap": adapt_vmap}, max(1, args.repeats // 2))
        row = {"network": name, "channels": width, "tasks": args.tasks, "seeds": args.seeds,
               "second_order_tasks_per_s": {k: args.tasks / v for k, v in tasks.items()},
               "stacked_seeds_tasks_per_s": {k: args.seeds * args.tasks / v for k, v in seeds.items()},
               "grouped_max_abs_gradient_difference_float32": grouped_error,
               "first_order_adaptation_tasks_per_s": {k: 20 / v for k, v in adapt.items()}}
        print(json.dumps(row))
        rows.append(row)
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", type=int, default=2)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    result = {"torch": torch.__version__, "threads": args.threads,
              "machine": platform.processor() or platform.machine(),
              "correctness": correctness(), "speed": speed(args, open_data(None))}
    if args.json:
        write_json(args.json, result)


if __name__ == "__main__":
    main()
