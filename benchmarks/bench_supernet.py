"""Time the reference (naive) vs the fused search supernet: forward+backward and a second-order step.

A second-order step is one MAML-style inner step through the network:
``g = grad(loss_support(theta), theta, create_graph=True)``, then
``loss_query(theta - 0.1 g).backward()`` (gradients reach theta and z).

Timing: one process per (config, measurement) builds both networks, warms each up, then
alternates naive and fused step by step, so that both see the same load on a shared
machine; the median and the minimum of the repeats are reported (the minimum is the
better estimate of the cost on an idle machine). Peak RSS: one fresh process per
(config, implementation, measurement) that runs the step twice.

Usage::

    python benchmarks/bench_supernet.py --json bench.json          # full table
    python benchmarks/bench_supernet.py --quick                    # one small config
    python benchmarks/bench_supernet.py --impl fused --repeats 9
"""
import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

CONFIGS = [
    {"name": "C8-L3-28px-B25", "C": 8, "layers": 3, "image": 28, "batch": 25},
    {"name": "C8-L3-28px-B80", "C": 8, "layers": 3, "image": 28, "batch": 80},
    {"name": "C16-L5-28px-B25", "C": 16, "layers": 5, "image": 28, "batch": 25},
]
QUICK = [{"name": "C4-L2-16px-B10", "C": 4, "layers": 2, "image": 16, "batch": 10}]
MODES = ("fwd_bwd", "second_order")
IMPLS = ("naive", "fused")


def _step(cfg, impl, mode):
    """Build one network and return a function running one ``mode`` step on it."""
    import torch
    import torch.nn.functional as F
    from torch.func import functional_call

    from bayesnas.models import NUM_EDGES, NUM_OPS, SearchNetwork
    from bayesnas.models.reference import ReferenceSearchNetwork

    torch.manual_seed(0)
    if impl == "naive":
        net = ReferenceSearchNetwork(in_channels=1, num_classes=5, C=cfg["C"], layers=cfg["layers"])
    else:
        net = SearchNetwork(in_channels=1, num_classes=5, C=cfg["C"], layers=cfg["layers"])
    B, H = cfg["batch"], cfg["image"]
    x = torch.randn(B, 1, H, H)
    y = torch.randint(0, 5, (B,))
    zn = torch.softmax(torch.randn(NUM_EDGES, NUM_OPS), -1).requires_grad_()
    zr = torch.softmax(torch.randn(NUM_EDGES, NUM_OPS), -1).requires_grad_()
    params = dict(net.named_parameters())

    def fwd_bwd():
        F.cross_entropy(net(x, zn, zr), y).backward()

    def second_order():
        loss = F.cross_entropy(functional_call(net, params, (x, zn, zr)), y)
        grads = torch.autograd.grad(loss, list(params.values()), create_graph=True)
        adapted = {k: p - 0.1 * g for (k, p), g in zip(params.items(), grads, strict=True)}
        F.cross_entropy(functional_call(net, adapted, (x, zn, zr)), y).backward()

    fn = fwd_bwd if mode == "fwd_bwd" else second_order

    def step():
        net.zero_grad(set_to_none=True)
        zn.grad = zr.grad = None
        fn()
    return step


def _child_time(spec):
    """Alternate the implementations step by step; seconds per repeat for each."""
    import torch
    torch.set_num_threads(spec["threads"])
    steps = {impl: _step(spec["cfg"], impl, spec["mode"]) for impl in spec["impls"]}
    for step in steps.values():
        for _ in range(spec["warmup"]):
            step()
    times = {impl: [] for impl in steps}
    for _ in range(spec["repeats"]):
        for impl, step in steps.items():
            t0 = time.perf_counter()
            step()
            times[impl].append(time.perf_counter() - t0)
    return times


def _child_rss(spec):
    import torch
    torch.set_num_threads(spec["threads"])
    step = _step(spec["cfg"], spec["impls"][0], spec["mode"])
    step()
    step()
    return {"peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0}


def _run_child(kind, spec):
    cmd = [sys.executable, os.path.abspath(__file__), "--child", json.dumps(dict(spec, kind=kind))]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=ROOT)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(args):
    if args.child:
        spec = json.loads(args.child)
        print(json.dumps((_child_time if spec["kind"] == "time" else _child_rss)(spec)))
        return None
    import torch
    configs = QUICK if args.quick else CONFIGS
    impls = list(IMPLS) if args.impl == "both" else [args.impl]
    print(f"torch {torch.__version__}, {args.threads} threads, "
          f"warm-up {args.warmup}, {args.repeats} alternating repeats, load average "
          f"{os.getloadavg()[0]:.2f}", flush=True)
    print(f"{'config':16} {'measurement':12} "
          + " ".join(f"{i + ' med/min ms':>19}" for i in impls)
          + f" {'ratio med/min':>14} " + " ".join(f"{i + ' RSS MiB':>16}" for i in impls), flush=True)
    results = []
    for cfg in configs:
        for mode in MODES:
            spec = {"cfg": cfg, "mode": mode, "threads": args.threads,
                    "warmup": args.warmup, "repeats": args.repeats, "impls": impls}
            load_before = os.getloadavg()[0]
            times = _run_child("time", spec)
            row = {"config": cfg, "mode": mode, "load_average": [load_before, os.getloadavg()[0]]}
            for impl in impls:
                ms = [1e3 * t for t in times[impl]]
                row[impl] = {"median_ms": statistics.median(ms), "min_ms": min(ms), "times_ms": ms}
                if not args.no_rss:
                    row[impl].update(_run_child("rss", dict(spec, impls=[impl])))
            if len(impls) == 2:
                row["ratio_median"] = row["naive"]["median_ms"] / row["fused"]["median_ms"]
                row["ratio_min"] = row["naive"]["min_ms"] / row["fused"]["min_ms"]
            results.append(row)
            line = f"{cfg['name']:16} {mode:12} " + " ".join(
                f"{row[i]['median_ms']:11.0f}/{row[i]['min_ms']:<7.0f}" for i in impls)
            if len(impls) == 2:
                line += f" {row['ratio_median']:6.2f}/{row['ratio_min']:<7.2f}"
            line += " " + " ".join(f"{row[i].get('peak_rss_mib', float('nan')):16.0f}" for i in impls)
            print(line + f"  (load {load_before:.1f}->{os.getloadavg()[0]:.1f})", flush=True)
    report = {"torch": torch.__version__, "threads": args.threads,
              "warmup": args.warmup, "repeats": args.repeats,
              "machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
              "results": results}
    if args.json:
        from bayesnas.fileio import write_json
        write_json(args.json, report)
    return report


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--json", help="also write the results to this JSON file")
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps per network")
    p.add_argument("--repeats", type=int, default=5, help="timed steps per network, alternating")
    p.add_argument("--impl", choices=["both", "naive", "fused"], default="both")
    p.add_argument("--no-rss", action="store_true", help="skip the peak-RSS processes")
    p.add_argument("--quick", action="store_true", help="one tiny configuration (smoke test)")
    p.add_argument("--child", help=argparse.SUPPRESS)
    return p.parse_args(argv)


if __name__ == "__main__":
    main(parse_args())
