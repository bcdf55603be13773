"""Scoring discrete cells: every op of every edge (fused) against only the kept edges (discrete).

    taskset -c 1 python benchmarks/bench_score.py --config configs/omniglot_cpu.json --crossover \
        --json benchmarks/results/bench_score.json
    taskset -c 1 python benchmarks/bench_score.py --run runs/frozen_s0 --tasks 20

Weight-sharing evaluation (:func:`bayesnas.analysis.score.score_tasks`: the guide's inner
steps on each task's support set with the cell fixed, then the posterior predictive on its
query set) of DARTS_V2 and compare's random cells on the same held-out tasks, once with the
sparse path of the search supernet (``discrete=True``, the default:
:meth:`~bayesnas.models.SearchCell.forward_discrete`) and once without (``discrete=False``:
the fused supernet computes all 9 ops of all 14 edges), alternated round by round so both
see the same load. Reports seconds per cell per task of each (medians over rounds), their
ratio, and the largest difference of a per-task score between the two: in float32 (rounding,
which the guide's steps amplify), beside the fused path's own such difference between T tasks
per call and one per call (DARTS_V2), and in float64 (the first task batch of DARTS_V2).

``--crossover`` also times one scoring of cells with a few mixture edges (evidence's undecided
edges) on both paths: the sparse path computes each nonzero (edge, op) pair on its own, so
past some number of pairs the fused path is faster; this places
:data:`~bayesnas.models.supernet.SPARSE_MAX_PAIRS`.

The meta-network is a fit run's (``--run``), or, with ``--config``, that of a 2-iteration fit
of the config made in a temporary folder (the supernet's cost does not depend on training).
"""
import argparse
import os
import platform
import random
import statistics
import sys
import tempfile
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from bayesnas.analysis.compare import architectures  # noqa: E402
from bayesnas.analysis.score import architecture_scores, held_out, score_tasks  # noqa: E402
from bayesnas.config import FitConfig, resolve_config  # noqa: E402
from bayesnas.fileio import write_json  # noqa: E402
from bayesnas.models import DARTS_V2, NUM_EDGES, NUM_OPS, genotype_to_dict, supernet  # noqa: E402
from bayesnas.training import fit  # noqa: E402


def short_run(config, out):
    """A 2-iteration fit of ``config`` (a JSON file) in ``out``, no validation: a meta-network to score with."""
    cfg = resolve_config(FitConfig, config, {"iterations": 2, "val_every": 1000, "threads": 1})
    fit(cfg, out=out, progress=False)
    return out


def measure(run, args):
    h = held_out(run, args.tasks, batch=args.batch, seed=args.seed)
    cells = [("darts_v2", genotype_to_dict(DARTS_V2))] + architectures((), args.random_cells, ())
    work = (h.meta, cells, h.task_batches, h.cfg.inner_steps, h.tau, h.kl_weight)
    per_cell_task = len(cells) * args.tasks
    seconds = {"discrete": [], "fused": []}
    scores = {}
    for _ in range(args.rounds):
        for name, discrete in (("discrete", True), ("fused", False)):
            t0 = time.perf_counter()
            scores[name] = score_tasks(*work, samples=args.samples, seed=args.seed, discrete=discrete)
            seconds[name].append((time.perf_counter() - t0) / per_cell_task)
    med = {k: statistics.median(v) for k, v in seconds.items()}
    pairs = list(zip(scores["discrete"], scores["fused"], strict=True))
    loglik_diff = max(abs(a - b) for s, f in pairs for a, b in zip(s.loglik, f.loglik, strict=True))
    same_acc = all(s.accuracy == f.accuracy for s, f in pairs)
    # float32 rounding differs between the paths and the guide's steps amplify it (most on a barely
    # trained meta-network). The floor: the fused path one task per call against T tasks per call
    # (the same function and noise, other rounding); in float64 the two paths agree to its rounding.
    h.meta.batch_tasks = False
    per_task = score_tasks(h.meta, cells[:1], *work[2:], samples=args.samples, seed=args.seed, discrete=False)[0]
    h.meta.batch_tasks = True
    floor = max(abs(a - b) for a, b in zip(per_task.loglik, scores["fused"][0].loglik, strict=True))
    meta64 = h.meta.double()
    first = h.task_batches[0]
    first = type(first)(*(t.double() if t.is_floating_point() else t for t in first))
    s64 = [score_tasks(meta64, cells[:1], [first], h.cfg.inner_steps, h.tau, h.kl_weight, samples=args.samples,
                       seed=args.seed, discrete=discrete)[0].loglik for discrete in (True, False)]
    cfg = h.cfg
    return {"run": str(run), "iteration": h.iteration, "channels": cfg.channels, "cells": cfg.cells,
            "image_size": cfg.image_size, "ways": cfg.ways, "shots": cfg.shots, "queries": cfg.queries,
            "inner_steps": cfg.inner_steps, "weights": h.meta.mu.numel(), "scored_cells": [c[0] for c in cells],
            "tasks": args.tasks, "batch": args.batch, "samples": args.samples, "rounds": args.rounds,
            "seconds_per_cell_task": {k: [round(s, 4) for s in v] for k, v in seconds.items()},
            "median_seconds_per_cell_task": {k: round(v, 4) for k, v in med.items()},
            "speedup": round(med["fused"] / med["discrete"], 2), "max_loglik_difference": loglik_diff,
            "float64_max_loglik_difference": max(abs(a - b) for a, b in zip(*s64, strict=True)),
            "fused_batched_vs_per_task_max_loglik_difference": floor,
            "same_accuracies": same_acc,
            "mean_loglik_discrete_fused": {s.label: [s.mean_loglik, f.mean_loglik] for s, f in pairs}}


def crossover(run, args):
    """Seconds of one scoring of ``--crossover-tasks`` tasks on the sparse and on the fused path, for cells
    with ``u`` mixture edges (``softmax(alpha)``, as evidence's undecided edges) and the rest one-hot on
    a random op, in both cell types: where :data:`~bayesnas.models.supernet.SPARSE_MAX_PAIRS` belongs."""
    h = held_out(run, args.crossover_tasks, batch=args.crossover_tasks, seed=args.seed)
    rng = random.Random(args.seed)
    limit = supernet.SPARSE_MAX_PAIRS
    rows = []
    for u in (0, 1, 2, 3, 4, 5, 6, 14):
        zs = []
        for alpha in (h.meta.alpha_normal, h.meta.alpha_reduce):
            z = torch.zeros(NUM_EDGES, NUM_OPS)
            z[torch.arange(NUM_EDGES), torch.tensor([rng.randrange(1, NUM_OPS) for _ in range(NUM_EDGES)])] = 1.0
            mixed = rng.sample(range(NUM_EDGES), u)
            z[mixed] = alpha.detach().softmax(-1)[mixed]
            zs.append(z)
        seconds = {"sparse": [], "fused": []}
        try:
            for _ in range(args.rounds):
                for name, max_pairs in (("sparse", NUM_EDGES * NUM_OPS), ("fused", -1)):
                    supernet.SPARSE_MAX_PAIRS = max_pairs
                    t0 = time.perf_counter()
                    architecture_scores(h.meta, *zs, h.task_batches, h.cfg.inner_steps, h.tau, h.kl_weight, samples=1,
                                        seed=args.seed)
                    seconds[name].append(time.perf_counter() - t0)
        finally:
            supernet.SPARSE_MAX_PAIRS = limit
        med = {k: statistics.median(v) for k, v in seconds.items()}
        row = {"mixture_edges": u, "pairs": int(zs[0][:, 1:].ne(0).sum()), "sparse_s": round(med["sparse"], 3),
               "fused_s": round(med["fused"], 3), "sparse_over_fused": round(med["sparse"] / med["fused"], 2)}
        print(row, flush=True)
        rows.append(row)
    return {"tasks": args.crossover_tasks, "samples": 1, "rounds": args.rounds, "sparse_max_pairs": limit,
            "rows": rows}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", default=None, help="a fit run folder (read only)")
    p.add_argument("--config", default=os.path.join(ROOT, "configs", "omniglot_cpu.json"),
                   help="without --run: a FitConfig JSON to make a 2-iteration run of")
    p.add_argument("--tasks", type=int, default=10)
    p.add_argument("--batch", type=int, default=10, help="tasks adapted at once")
    p.add_argument("--random-cells", type=int, default=2)
    p.add_argument("--samples", type=int, default=4)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--crossover", action="store_true",
                   help="also time partly decided cells on both paths (SPARSE_MAX_PAIRS)")
    p.add_argument("--crossover-tasks", type=int, default=2)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        run = args.run or short_run(args.config, os.path.join(tmp, "run"))
        result = measure(run, args)
        if args.crossover:
            result["crossover"] = crossover(run, args)
    if args.run is None:
        result["run"] = f"2-iteration fit of {os.path.relpath(args.config, ROOT)}"
    report = {"command": " ".join(["python", *sys.argv]), "torch": torch.__version__, "threads": args.threads,
              "machine": platform.processor() or platform.machine(), **result}
    med = result["median_seconds_per_cell_task"]
    print(f"{result['run']}: {med['fused']:.3f} s per cell per task fused, {med['discrete']:.3f} s discrete: "
          f"{result['speedup']:.1f}x; largest per-task log-likelihood difference "
          f"{result['max_loglik_difference']:.2g} (fused per task vs batched: "
          f"{result['fused_batched_vs_per_task_max_loglik_difference']:.2g}; float64: "
          f"{result['float64_max_loglik_difference']:.2g}), "
          f"accuracies {'identical' if result['same_accuracies'] else 'DIFFER'}")
    if args.json:
        write_json(args.json, report)
    return report


if __name__ == "__main__":
    main()
