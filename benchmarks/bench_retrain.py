"""Tasks per second of second-order MAML retraining with PyTorch's own convolution derivatives
(nn.Conv2d, "before") and with the whole-call grouped-convolution Functions of
models/_conv.py ("after"), side by side in one run.

    python benchmarks/bench_retrain.py --json benchmarks/results/retrain_conv_cpu.json

For each architecture (DARTS_V2 and a random cell of the DARTS space, ``--random-seed``),
one network is built with RetrainConfig's defaults (C=16, 3 cells, 5-way 1-shot, 15
queries, 2 tasks, 5 second-order inner steps, the embedded 28x28 Omniglot) and copied
with its convolutions switched back to nn.Conv2d; both take the same meta-steps on the
same batches, alternating step by step, after ``--warmup`` untimed ones. Reported:
median seconds per meta-step and tasks per second of each, their ratio, and the largest
difference between the two copies' parameters after the steps (the same function).
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

from bayesnas.fileio import write_json

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from bayesnas.config import RetrainConfig, resolve_config  # noqa: E402
from bayesnas.data import open_data  # noqa: E402
from bayesnas.models._conv import Conv2d  # noqa: E402
from bayesnas.models.genotypes import genotype_to_dict, random_genotype  # noqa: E402
from bayesnas.training.loop import task_samplers  # noqa: E402
from bayesnas.training.retrain import build_retrain_network, maml_step  # noqa: E402


def plain_copy(net):
    plain = copy.deepcopy(net)
    for m in plain.modules():
        if type(m) is Conv2d:
            m.__class__ = nn.Conv2d
    return plain


def measure(arch, args):
    given = {"channels": args.channels or None, "inner_steps": args.inner_steps}
    cfg = resolve_config(RetrainConfig, overrides=dict(given, arch=arch))
    data = open_data(cfg.data)
    sampler, _ = task_samplers(cfg, data, torch.device("cpu"))
    torch.manual_seed(0)
    nets = {"after": build_retrain_network(cfg, data.channels, data.image_size[0])}
    nets["before"] = plain_copy(nets["after"])
    optimisers = {k: torch.optim.Adam(n.parameters(), lr=cfg.meta_lr) for k, n in nets.items()}
    seconds = {k: [] for k in nets}
    for step in range(args.warmup + args.steps):
        batch = sampler.batch(range(step * cfg.tasks, (step + 1) * cfg.tasks))
        for name in (("before", "after") if step % 2 == 0 else ("after", "before")):
            t0 = time.perf_counter()
            maml_step(nets[name], optimisers[name], batch, cfg)
            if step >= args.warmup:
                seconds[name].append(time.perf_counter() - t0)
    difference = max((a - b).abs().max().item() for a, b in zip(nets["after"].parameters(),
                                                                nets["before"].parameters(), strict=True))
    row = {"settings": {k: cfg.to_dict()[k] for k in ("channels", "layers", "inner_steps", "tasks", "ways", "shots",
                                                      "queries", "first_order")}}
    for name, values in seconds.items():
        median = statistics.median(values)
        row[name] = {"median_seconds_per_step": median, "tasks_per_second": cfg.tasks / median, "steps": len(values)}
    row["speedup"] = row["before"]["median_seconds_per_step"] / row["after"]["median_seconds_per_step"]
    row["max_abs_parameter_difference_after_steps"] = difference
    return row


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3, help="timed meta-steps per implementation and architecture")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--random-seed", type=int, default=0, help="seed of the random cell")
    parser.add_argument("--channels", type=int, default=None, help="override C (RetrainConfig's: 16)")
    parser.add_argument("--inner-steps", type=int, default=None, help="override the inner steps (5)")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    archs = {"darts_v2": "darts_v2",
             f"random_cell_seed{args.random_seed}": genotype_to_dict(random_genotype(args.random_seed))}
    result = {"command": "python benchmarks/bench_retrain.py " + " ".join(argv if argv is not None else sys.argv[1:]),
              "threads": args.threads, "device": "cpu", "machine": platform.machine(), "torch": torch.__version__,
              "archs": {name: measure(arch, args) for name, arch in archs.items()}}
    print(json.dumps(result, indent=1))
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        write_json(args.json, result)  # atomic, as every JSON bayesnas writes
    return result


if __name__ == "__main__":
    main()
