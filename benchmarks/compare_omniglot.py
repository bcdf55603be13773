"""The ``compare`` table (paper's Table 1 layout) on the embedded Omniglot data, 1-shot and 5-shot.

    python benchmarks/compare_omniglot.py [--genotype runs/fit-a] [--iterations 100] [--json out.json]

For 5-way 1-shot and 5-way 5-shot, every architecture (the given searched cells, DARTS_V2,
Conv-4 and ``--random-cells`` cells drawn uniformly from the search space) is retrained with
second-order MAML under one identical budget (iterations, tasks, inner steps, channels,
layers, seeds) and evaluated on the same seeded test tasks of held-out characters. With
several ``--seeds``, accuracies are averaged over the seeds per test task before the mean
and 95% CI over tasks are taken, and the "vs" column is each architecture's paired per-task
difference from the first (README, "Protocol rules"). Prints one table per setting and
writes everything, with the budget and wall times, as JSON.
The default budget is sized to finish in about 20 minutes on a 2-core CPU with one torch
thread; it trains far less than the paper (30,000 iterations), so the numbers compare
architectures at a small budget, not at convergence.
"""
import argparse
import os
import platform
import time

import torch

from bayesnas.fileio import write_json
from bayesnas.inference.compare import compare, format_compare_table
from bayesnas.inference.maml import RetrainConfig

SETTINGS = [{"name": "5-way 1-shot", "ways": 5, "shots": 1}, {"name": "5-way 5-shot", "ways": 5, "shots": 5}]


def main(args):
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    report = {"torch": torch.__version__, "torch_threads": args.threads, "device": args.device,
              "machine": platform.processor() or platform.machine(), "genotypes": args.genotype, "settings": []}
    for setting in SETTINGS:
        cfg = RetrainConfig(ways=setting["ways"], shots=setting["shots"], queries=args.queries, tasks=args.tasks,
                            inner_steps=args.inner_steps, eval_inner_steps=args.eval_inner_steps,
                            iterations=args.iterations, channels=args.channels, layers=args.layers,
                            val_every=args.iterations, val_tasks=args.val_tasks, checkpoint_every=args.iterations,
                            device=args.device, threads=args.threads)
        out = os.path.join(args.out, f"{setting['ways']}way{setting['shots']}shot")
        start = time.perf_counter()
        result = compare(args.genotype, random_cells=args.random_cells, config=cfg, seeds=args.seeds,
                         eval_tasks=args.eval_tasks, out=out, progress=args.progress, log=print)
        wall = time.perf_counter() - start
        print(f"\n== {setting['name']} (wall {wall:.0f} s) ==")
        print(format_compare_table(result))
        print()
        report["settings"].append({**setting, "wall_seconds": round(wall, 1), "result": result.to_dict()})
    report["wall_seconds"] = round(time.perf_counter() - t0, 1)
    print(f"total wall time {report['wall_seconds']:.0f} s, {args.threads} torch thread(s), {args.device}")
    write_json(args.json or os.path.join(args.out, "compare_omniglot.json"), report)
    return report


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--genotype", action="append", default=[],
                        help="a searched cell: genotype JSON or fit run folder (repeatable)")
    parser.add_argument("--random-cells", type=int, default=2)
    parser.add_argument("--iterations", type=int, default=100, help="meta-iterations of every run")
    parser.add_argument("--tasks", type=int, default=2, help="tasks per meta-batch")
    parser.add_argument("--inner-steps", type=int, default=1, help="second-order inner steps in training")
    parser.add_argument("--eval-inner-steps", type=int, default=3, help="inner steps at validation/test time")
    parser.add_argument("--queries", type=int, default=5)
    parser.add_argument("--channels", type=int, default=8, help="Conv-4 filters / first cell's channels")
    parser.add_argument("--layers", type=int, default=2, help="cells of a genotype network")
    parser.add_argument("--val-tasks", type=int, default=20)
    parser.add_argument("--eval-tasks", type=int, default=100)
    parser.add_argument("--seeds", type=lambda s: [int(v) for v in s.split(",")], default=[0])
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", default="runs/compare-omniglot", help="folder of the runs (reused when rerun)")
    parser.add_argument("--json", help="the report [default: OUT/compare_omniglot.json]")
    parser.add_argument("--progress", action="store_true", help="progress bars")
    return parser.parse_args(argv)


if __name__ == "__main__":
    main(parse_args())
