"""Task-sampling throughput on the embedded Omniglot file (the train split).

    python benchmarks/bench_sampler.py [--tasks 500] [--repeats 5] [--threads 1] [--json out.json]

For each setting it times ``--tasks`` calls of ``TaskSampler.task(i)`` (one task per call,
as a training loop asks for them) and ``--tasks / --batch`` calls of ``batch`` with
``--batch`` tasks, and reports the median tasks/second over ``--repeats`` repeats, with
the torch thread count used.
"""
import argparse
import platform
import statistics
import time

import torch

from bayesnas.data import TaskSampler, load_default
from bayesnas.fileio import write_json

SETTINGS = [
    {"name": "5-way 1-shot 15-query", "ways": 5, "shots": 1, "queries": 15, "rotations": False},
    {"name": "5-way 5-shot 15-query", "ways": 5, "shots": 5, "queries": 15, "rotations": False},
    {"name": "5-way 5-shot 15-query, rotations", "ways": 5, "shots": 5, "queries": 15, "rotations": True},
]


def tasks_per_second(run, tasks, repeats):
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        rates.append(tasks / (time.perf_counter() - start))
    return statistics.median(rates)


def main(args):
    torch.set_num_threads(args.threads)
    train = load_default().split("train")
    results = []
    for setting in SETTINGS:
        sampler = TaskSampler(train, setting["ways"], setting["shots"], setting["queries"],
                              rotations=setting["rotations"], device=args.device)
        sampler.batch(range(args.batch))                       # warm-up
        single = tasks_per_second(lambda: [sampler.task(i) for i in range(args.tasks)],
                                  args.tasks, args.repeats)
        calls = max(1, args.tasks // args.batch)
        batched = tasks_per_second(
            lambda: [sampler.batch(range(b * args.batch, (b + 1) * args.batch)) for b in range(calls)],
            calls * args.batch, args.repeats)
        results.append({**setting, "tasks_per_s_single": round(single, 1),
                        f"tasks_per_s_batch{args.batch}": round(batched, 1)})
        print(f"{setting['name']:<36} task(): {single:9.0f} tasks/s   "
              f"batch({args.batch}): {batched:9.0f} tasks/s")
    report = {
        "data": str(load_default().path), "split": "train", "device": args.device,
        "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
        "machine": platform.processor() or platform.machine(),
        "tasks_per_repeat": args.tasks, "repeats": args.repeats, "statistic": "median",
        "results": results,
    }
    print(f"(median of {args.repeats} repeats, {torch.get_num_threads()} torch thread(s), {args.device})")
    if args.json:
        write_json(args.json, report)
    return report


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=500, help="tasks per repeat")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch", type=int, default=8, help="tasks per batch() call")
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", help="also write the results to this JSON file")
    return parser.parse_args(argv)


if __name__ == "__main__":
    main(parse_args())
