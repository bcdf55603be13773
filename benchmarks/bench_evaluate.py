"""Test-time adaptation speed (``evaluate``'s inner loop) and the 3x3 max-pool layout, in one run.

    python benchmarks/bench_evaluate.py --json benchmarks/results/evaluate_cpu.json

Two measurements, each alternating its variants so that all see the same load:

* ``pooling``: forward + backward of ``F.max_pool2d(x, 3, stride, 1)`` on NCHW tensors
  against the same pool through a channels-last copy (both layout copies included), over a
  grid of batch, channels, size and stride; the ratio decides
  ``bayesnas.models.operations.CHANNELS_LAST_POOL_MIN``.
* ``evaluate``: tasks per second of :func:`~bayesnas.training.retrain.task_accuracies`
  (what ``evaluate`` and retraining's validation run: ``--steps`` first-order inner steps
  per task, then the query forward) on the networks of the committed comparison at their
  matched widths (benchmarks/results/compare_omniglot.json: DARTS_V2, the two BASE cells,
  Conv-4), per few-shot setting, with the NCHW pool (``before``) and with the shipped rule
  (``after``), alternated chunk by chunk over the same tasks; the per-task accuracies must be
  identical.
* ``compile`` (``--compile``): the same per-task work (``--steps`` first-order steps, then the
  query forward, one task at a time) eager and through ``torch.compile`` (Inductor, static
  shapes), on DARTS_V2 and Conv-4, 5-way 1-shot: the compile time, seconds per task of each,
  the number of tasks after which compiling pays, and whether the per-task accuracies agree
  (Inductor's on-disk caches start empty unless ``--warm-cache``).
* ``batched`` (``--batched``): :func:`~bayesnas.training.retrain.task_accuracies` one task at a
  time (``batched=False``) against a chunk of tasks in one ``vmap`` call (``batched=True``), on
  the pool protocol's networks (RetrainConfig channels 8, 2 cells: DARTS_V2 and a random cell,
  ``--random-seed``) and Conv-4 at its matched width, 5-way 1-shot, per ``--chunks`` size:
  tasks per second, the median of ``--rounds`` rounds, the two variants alternated round by
  round over the same tasks; and whether the per-task accuracies are identical.

    taskset -c 1 python benchmarks/bench_evaluate.py --no-pooling --no-evaluate --batched \
        --json benchmarks/results/evaluate_batched_cpu.json
"""
import argparse
import json
import os
import platform
import statistics
import sys
import time

import torch
import torch.nn.functional as F

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from bayesnas.config import RetrainConfig  # noqa: E402
from bayesnas.data import TaskSampler, open_data  # noqa: E402
from bayesnas.fileio import write_json  # noqa: E402
from bayesnas.models import build_network, load_genotype, operations  # noqa: E402
from bayesnas.models.genotypes import genotype_to_dict, random_genotype  # noqa: E402
from bayesnas.training.retrain import build_retrain_network, task_accuracies  # noqa: E402

RESULTS = os.path.join(ROOT, "benchmarks", "results")
#: name -> (what build_network takes, channels matched to ~16.9k parameters in the committed compare)
NETWORKS = {"darts_v2": ("darts_v2", 20),
            "base_seed0": (os.path.join(RESULTS, "base_omniglot_seed0_genotype.json"), 11),
            "base_seed1": (os.path.join(RESULTS, "base_omniglot_seed1_genotype.json"), 8), "conv4": ("conv4", 25)}
SETTINGS = {"5w1s": (5, 1), "5w5s": (5, 5), "20w1s": (20, 1)}


def _timed(fn, repeats):
    for _ in range(3):
        fn()
    t0 = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - t0) / repeats


def pooling_grid(repeats):
    rows = []
    for batch in (5, 25):
        for channels in (4, 8, 16, 32, 64):
            for size in (7, 14, 28):
                for stride in (1, 2):
                    x = torch.randn(batch, channels, size, size, requires_grad=True)
                    plain = lambda: F.max_pool2d(x, 3, stride, 1).sum().backward()  # noqa: E731
                    last = lambda: F.max_pool2d(x.contiguous(memory_format=torch.channels_last), 3, stride,  # noqa: E731
                                                1).contiguous().sum().backward()
                    a, b = [], []
                    for _ in range(3):
                        a.append(_timed(plain, repeats))
                        b.append(_timed(last, repeats))
                    a, b = statistics.median(a), statistics.median(b)
                    rows.append({"shape": [batch, channels, size, size], "stride": stride, "numel": x.numel(),
                                 "nchw_ms": 1e3 * a, "channels_last_ms": 1e3 * b, "nchw_over_channels_last": a / b})
    return rows


def evaluate_speed(args, data):
    out = []
    for setting in args.settings:
        ways, shots = SETTINGS[setting]
        for name in args.networks:
            arch, channels = NETWORKS[name]
            if arch.endswith(".json"):
                arch = load_genotype(arch)
            torch.manual_seed(0)
            net = build_network(arch, in_channels=data.channels, num_classes=ways, image_size=data.image_size[0],
                                C=channels, layers=2, hidden=channels)
            sampler = TaskSampler(data.split("test"), ways, shots, args.queries, seed=0)
            times = {"before": [], "after": []}
            accs = {"before": [], "after": []}
            for first in range(0, args.tasks, args.chunk):
                indices = list(range(first, min(first + args.chunk, args.tasks)))
                for variant in ("before", "after"):
                    operations.CHANNELS_LAST_POOL_MIN = float("inf") if variant == "before" else args.threshold
                    t0 = time.perf_counter()
                    accs[variant].append(task_accuracies(net, sampler, indices, args.steps, 0.4))
                    times[variant].append(time.perf_counter() - t0)
            operations.CHANNELS_LAST_POOL_MIN = args.threshold
            before, after = sum(times["before"]), sum(times["after"])
            row = {"setting": setting, "network": name, "channels": channels, "tasks": args.tasks,
                   "tasks_per_s": {"before": args.tasks / before, "after": args.tasks / after},
                   "speedup": before / after,
                   "identical_accuracies": bool(torch.equal(torch.cat(accs["before"]), torch.cat(accs["after"])))}
            print(json.dumps(row))
            out.append(row)
    return out


def compile_speed(args, data):
    import tempfile

    from torch.func import functional_call

    if not args.warm_cache:  # what a user's first evaluation pays: Inductor's caches start empty
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="bench-inductor-")

    rows = []
    for name in ("darts_v2", "conv4"):
        arch, channels = NETWORKS[name]
        torch.manual_seed(0)
        net = build_network(arch, in_channels=data.channels, num_classes=5, image_size=data.image_size[0],
                            C=channels, layers=2, hidden=channels)
        start = {k: v.detach() for k, v in net.named_parameters()}
        sampler = TaskSampler(data.split("test"), 5, 1, args.queries, seed=0)

        def step(p, x, y):
            with torch.enable_grad():
                p = {k: v.requires_grad_(True) for k, v in p.items()}
                grads = torch.autograd.grad(F.cross_entropy(functional_call(net, p, (x,)), y), list(p.values()))
            return {k: (v - 0.4 * g).detach() for (k, v), g in zip(p.items(), grads, strict=True)}

        def predict(p, x):
            with torch.no_grad():
                return functional_call(net, p, (x,)).argmax(-1)

        def run(step_fn, predict_fn, tasks):
            accs = []
            for i in tasks:
                b = sampler.batch([i])
                p = dict(start)
                for _ in range(args.steps):
                    p = step_fn(p, b.support_x[0], b.support_y[0])
                accs.append((predict_fn(p, b.query_x[0]) == b.query_y[0]).double().mean().item())
            return accs

        t0 = time.perf_counter()
        eager = run(step, predict, range(args.tasks))
        eager_s = (time.perf_counter() - t0) / args.tasks
        compiled_step, compiled_predict = torch.compile(step, dynamic=False), torch.compile(predict, dynamic=False)
        t0 = time.perf_counter()
        run(compiled_step, compiled_predict, [0])
        compile_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        compiled = run(compiled_step, compiled_predict, range(args.tasks))
        compiled_s = (time.perf_counter() - t0) / args.tasks
        gain = eager_s - compiled_s
        row = {"network": name, "channels": channels, "tasks": args.tasks, "eager_seconds_per_task": eager_s,
               "compile_seconds": compile_s, "compiled_seconds_per_task": compiled_s,
               "speedup_after_compile": eager_s / compiled_s,
               "tasks_to_break_even": compile_s / gain if gain > 0 else None,
               "identical_accuracies": eager == compiled}
        print(json.dumps(row))
        rows.append(row)
    return rows


def batched_speed(args, data):
    """The loop against the batched form of task_accuracies, per network and chunk size."""
    pool = {"channels": 8, "layers": 2}  # the pool protocol's networks (benchmarks/build_pool.py)
    nets = {"darts_v2": ("darts_v2", pool), f"random_cell_seed{args.random_seed}":
            (genotype_to_dict(random_genotype(args.random_seed)), pool),
            "conv4": ("conv4", {"channels": NETWORKS["conv4"][1]})}
    rows = []
    for name, (arch, size) in nets.items():
        cfg = RetrainConfig(arch=arch, ways=5, shots=1, queries=args.queries, **size)
        torch.manual_seed(0)
        net = build_retrain_network(cfg, data.channels, data.image_size[0])
        sampler = TaskSampler(data.split("test"), 5, 1, args.queries, seed=0)
        indices = list(range(args.tasks))
        for chunk in args.chunks:
            seconds = {"loop": [], "batched": []}
            accs = {}
            for _ in range(args.rounds):
                for variant in ("loop", "batched"):
                    t0 = time.perf_counter()
                    accs[variant] = task_accuracies(net, sampler, indices, args.steps, cfg.inner_lr, chunk=chunk,
                                                    batched=variant == "batched")
                    seconds[variant].append(time.perf_counter() - t0)
            loop, batched = statistics.median(seconds["loop"]), statistics.median(seconds["batched"])
            row = {"network": name, "channels": cfg.channels, "layers": cfg.layers if name != "conv4" else None,
                   "chunk": chunk, "tasks": args.tasks, "rounds": args.rounds,
                   "tasks_per_s": {"loop": args.tasks / loop, "batched": args.tasks / batched},
                   "seconds": seconds, "speedup": loop / batched,
                   "differing_accuracies": int((accs["loop"] != accs["batched"]).sum()),
                   "largest_accuracy_difference": float((accs["loop"] - accs["batched"]).abs().max())}
            print(json.dumps({k: v for k, v in row.items() if k != "seconds"}))
            rows.append(row)
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", type=int, default=40, help="test tasks per network and setting")
    parser.add_argument("--chunk", type=int, default=4, help="tasks per alternation")
    parser.add_argument("--steps", type=int, default=3, help="first-order inner steps (the compare's)")
    parser.add_argument("--queries", type=int, default=5)
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--networks", nargs="+", default=list(NETWORKS), choices=list(NETWORKS))
    parser.add_argument("--repeats", type=int, default=20, help="pool calls per pooling timing")
    parser.add_argument("--no-pooling", dest="pooling", action="store_false")
    parser.add_argument("--no-evaluate", dest="evaluate", action="store_false")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile against eager")
    parser.add_argument("--warm-cache", action="store_true",
                        help="with --compile: keep Inductor's on-disk cache (default: a fresh one, a cold start)")
    parser.add_argument("--batched", action="store_true", help="also time batched task_accuracies against the loop")
    parser.add_argument("--chunks", type=int, nargs="+", default=[4, 8, 20], help="with --batched: chunk sizes")
    parser.add_argument("--rounds", type=int, default=3, help="with --batched: timed rounds per variant")
    parser.add_argument("--random-seed", type=int, default=0, help="with --batched: seed of the random cell")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    args.threshold = operations.CHANNELS_LAST_POOL_MIN
    torch.set_num_threads(args.threads)
    result = {"torch": torch.__version__, "threads": args.threads,
              "machine": platform.processor() or platform.machine(),
              "channels_last_pool_min": args.threshold, "steps": args.steps, "queries": args.queries,
              "inductor_cache": "warm" if args.warm_cache else "cold"}
    if args.pooling:
        result["pooling"] = pooling_grid(args.repeats)
    if args.evaluate:
        result["evaluate"] = evaluate_speed(args, open_data(None))
    if args.compile:
        result["compile"] = compile_speed(args, open_data(None))
    if args.batched:
        result["batched"] = batched_speed(args, open_data(None))
    if args.json:
        write_json(args.json, result)
    print(json.dumps({k: v for k, v in result.items() if k != "pooling"}, indent=1))


if __name__ == "__main__":
    main()
