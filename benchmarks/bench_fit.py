"""Seconds per meta-iteration and peak memory of ``fit``'s SVI step, for named configs.

    python benchmarks/bench_fit.py --config default --iterations 3 --json out.json
    python benchmarks/bench_fit.py --config paper --iterations 2
    torchrun --standalone --nproc-per-node 2 benchmarks/bench_fit.py --config default --tasks 2

Each named config runs in this process: one warm-up iteration, then the median of the
timed ones. Peak memory is the process's maximum resident set size (CPU) or
torch.cuda.max_memory_allocated (CUDA). Under torchrun every rank takes its share of the
meta-batch and the figure reported is tasks per second of the whole job.
"""
import argparse
import json
import os
import resource
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bayesnas.config import FitConfig  # noqa: E402
from bayesnas.distributed import init_distributed  # noqa: E402
from bayesnas.fileio import write_json  # noqa: E402
from bayesnas.device import resolve_device  # noqa: E402
from bayesnas.inference.model import task_share  # noqa: E402
from bayesnas.inference.svi import build_meta_network, make_optimiser, open_data, svi_step, task_samplers  # noqa: E402

CONFIGS = {
    "default": FitConfig(),
    # the paper's search shape at Omniglot size: C=16, 5 cells, 4 inner steps, 5-way 5-shot
    "paper": FitConfig(channels=16, cells=5, inner_steps=4, ways=5, shots=5, queries=5),
}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", choices=sorted(CONFIGS), default="default")
    parser.add_argument("--iterations", type=int, default=3, help="timed iterations (after one warm-up)")
    parser.add_argument("--tasks", type=int, default=None, help="override tasks per meta-batch")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    cfg = CONFIGS[args.config]
    if args.tasks:
        cfg.tasks = args.tasks
    ctx = init_distributed(resolve_device(args.device))
    data = open_data(cfg.data)
    sampler, _ = task_samplers(cfg, data, ctx.device)
    torch.manual_seed(0)
    meta = build_meta_network(cfg, data.channels).to(ctx.device)
    optimiser = make_optimiser(meta, cfg)
    start, stop = ctx.share(cfg.tasks)
    times = []
    for it in range(1, args.iterations + 2):
        first = (it - 1) * cfg.tasks
        batch = sampler.batch(list(range(first + start, first + stop)))
        ctx.barrier()
        t0 = time.perf_counter()
        with task_share(cfg.tasks, start, stop):
            svi_step(meta, optimiser, batch, cfg, it, reduce_gradients=ctx.average_gradients)
        if ctx.device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    timed = times[1:]
    if ctx.device.type == "cuda":
        peak_mb = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    median = statistics.median(timed)
    result = {
        "config": args.config, "settings": cfg.to_dict(), "device": str(ctx.device), "threads": args.threads,
        "processes": ctx.world_size, "seconds_per_iteration": median, "seconds_all": timed,
        "tasks_per_second": cfg.tasks / median, "peak_memory_mb_rank0": peak_mb,
        "parameters_D": meta.mu.numel(),
    }
    if ctx.is_main:
        print(json.dumps(result, indent=2))
        if args.json:
            write_json(args.json, result)
    ctx.close()


if __name__ == "__main__":
    main()
