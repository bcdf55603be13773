"""Time the naive vs the fused search supernet: forward+backward and a second-order step.

Each (config, implementation, measurement) runs in its own subprocesses so that its peak
RSS is its own; naive and fused alternate round by round so both see the same machine
load. Times are the median over all timed repeats. A second-order step is one MAML-style inner step through the network:
``g = grad(loss_support(theta), theta, create_graph=True)``, then
``loss_query(theta - 0.1 g).backward()`` (gradients reach theta and z).

Usage::

    python benchmarks/bench_supernet.py --json bench.json          # full table
    python benchmarks/bench_supernet.py --quick                    # one small config
    python benchmarks/bench_supernet.py --impl fused --grouping by_dilation
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


def _measure(cfg, impl, mode, grouping, threads, warmup, repeats):
    """Run in a child process: median/min seconds of ``mode`` and the peak RSS (MiB)."""
    import torch
    import torch.nn.functional as F
    from torch.func import functional_call

    from bayesnas.models import NUM_EDGES, NUM_OPS, SearchNetwork
    from benchmarks.naive_supernet import NaiveSearchNetwork

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    if impl == "naive":
        net = NaiveSearchNetwork(in_channels=1, num_classes=5, C=cfg["C"], layers=cfg["layers"])
    else:
        net = SearchNetwork(in_channels=1, num_classes=5, C=cfg["C"], layers=cfg["layers"],
                            dw_grouping=grouping)
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
        adapted = {k: p - 0.1 * g for (k, p), g in zip(params.items(), grads)}
        F.cross_entropy(functional_call(net, adapted, (x, zn, zr)), y).backward()

    fn = fwd_bwd if mode == "fwd_bwd" else second_order
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        net.zero_grad(set_to_none=True)
        zn.grad = zr.grad = None
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    return {"median_ms": 1e3 * statistics.median(times), "min_ms": 1e3 * min(times),
            "times_ms": [1e3 * t for t in times], "peak_rss_mib": rss}


def _run_child(cfg, impl, mode, args):
    cmd = [sys.executable, os.path.abspath(__file__), "--child",
           json.dumps({"cfg": cfg, "impl": impl, "mode": mode, "grouping": args.grouping,
                       "threads": args.threads, "warmup": args.warmup,
                       "repeats": args.repeats})]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=ROOT)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(args):
    if args.child:
        spec = json.loads(args.child)
        print(json.dumps(_measure(spec["cfg"], spec["impl"], spec["mode"], spec["grouping"],
                                  spec["threads"], spec["warmup"], spec["repeats"])))
        return None
    import torch
    configs = QUICK if args.quick else CONFIGS
    impls = ["naive", "fused"] if args.impl == "both" else [args.impl]
    results = []
    print(f"torch {torch.__version__}, {args.threads} threads, dw_grouping={args.grouping}, "
          f"warm-up {args.warmup}, {args.rounds} rounds x {args.repeats} repeats, load average "
          f"{os.getloadavg()[0]:.2f}", flush=True)
    header = f"{'config':18} {'measurement':13} " + " ".join(f"{i + ' ms':>12}" for i in impls)
    header += f" {'ratio':>7} " + " ".join(f"{i + ' RSS MiB':>16}" for i in impls)
    print(header, flush=True)
    for cfg in configs:
        for mode in MODES:
            row = {"config": cfg, "mode": mode}
            runs = {impl: [] for impl in impls}
            # Alternate the implementations round by round, so that both see the same load
            # on a shared machine; each round is a fresh process (its own warm-up and RSS).
            for _ in range(args.rounds):
                for impl in impls:
                    runs[impl].append(_run_child(cfg, impl, mode, args))
            for impl in impls:
                times = [t for r in runs[impl] for t in r["times_ms"]]
                row[impl] = {"median_ms": statistics.median(times), "min_ms": min(times),
                             "times_ms": times,
                             "peak_rss_mib": max(r["peak_rss_mib"] for r in runs[impl])}
            if len(impls) == 2:
                row["ratio"] = row["naive"]["median_ms"] / row["fused"]["median_ms"]
            row["load_average"] = os.getloadavg()[0]
            results.append(row)
            line = f"{cfg['name']:18} {mode:13} " + " ".join(
                f"{row[i]['median_ms']:12.0f}" for i in impls)
            line += f" {row.get('ratio', float('nan')):7.2f} " + " ".join(
                f"{row[i]['peak_rss_mib']:16.0f}" for i in impls)
            print(line + f"   (load {row['load_average']:.1f})", flush=True)
    report = {"torch": torch.__version__, "threads": args.threads, "grouping": args.grouping,
              "warmup": args.warmup, "repeats": args.repeats, "rounds": args.rounds, "machine": platform.processor()
              or platform.machine(), "cpus": os.cpu_count(), "results": results}
    if args.json:
        from bayesnas.fileio import write_json
        write_json(args.json, report)
    return report


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--json", help="also write the results to this JSON file")
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3, help="timed repeats per round")
    p.add_argument("--rounds", type=int, default=2,
                   help="rounds alternating naive and fused (each a fresh process)")
    p.add_argument("--impl", choices=["both", "naive", "fused"], default="both")
    p.add_argument("--grouping", choices=["per_op", "by_dilation", "single"], default="per_op",
                   help="kernel groups of the fused net's first depthwise stage")
    p.add_argument("--quick", action="store_true", help="one tiny configuration (smoke test)")
    p.add_argument("--child", help=argparse.SUPPRESS)
    return p.parse_args(argv)


if __name__ == "__main__":
    main(parse_args())
