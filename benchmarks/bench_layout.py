"""How much of a meta-iteration are layout operators? Counts and time, on the shipped search config.

    python benchmarks/bench_layout.py --json benchmarks/results/layout_cpu.json

For one SVI step of ``fit`` (configs/omniglot_cpu.json; ``--second-order`` to differentiate
through the inner steps) at each T of ``--tasks``:

* ``aten_calls`` / ``layout_calls``: the aten operators actually executed (forward, inner
  backward and outer backward), counted below autograd with a ``TorchDispatchMode``;
  layout operators are views, reshapes, slices, permutes, transposes, clones, copies,
  concatenations and splits. ``layout_sources``: the bayesnas source line each layout call
  was issued from (``<autograd engine>`` when it is part of a backward formula), top 15.
* ``self_ms`` / ``layout_and_allocation_self_ms``: ``torch.profiler`` self CPU time of all
  events and of the layout and allocation operators (the categories above plus empty,
  zeros and fill), and their share: the most that removing every such operator could save.
"""
import argparse
import collections
import json
import os
import platform
import sys
import traceback

import torch
from torch.utils._python_dispatch import TorchDispatchMode

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from bayesnas.config import FitConfig, from_dict, load_config_file  # noqa: E402
from bayesnas.data import open_data  # noqa: E402
from bayesnas.fileio import write_json  # noqa: E402
from bayesnas.inference.model import task_share  # noqa: E402
from bayesnas.training.loop import task_samplers  # noqa: E402
from bayesnas.training.search import build_meta_network, make_optimiser, svi_step  # noqa: E402

LAYOUT = {"view", "reshape", "_reshape_alias", "as_strided", "select", "slice", "transpose", "permute", "t",
          "expand", "clone", "contiguous", "unsqueeze", "squeeze", "split", "split_with_sizes", "chunk", "unbind",
          "narrow", "copy_", "alias", "detach", "flatten", "unflatten", "_unsafe_view", "cat", "stack"}
ALLOCATION = {"empty", "empty_like", "empty_strided", "zeros", "zeros_like", "zero_", "fill_", "resize_",
              "new_empty", "new_zeros", "new_empty_strided"}


class _Counter(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.total = 0
        self.sources = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.total += 1
        name = func.__name__.split(".")[0]
        if name in LAYOUT:
            frames = [f for f in traceback.extract_stack(limit=40) if f"{os.sep}bayesnas{os.sep}" in f.filename]
            where = (f"{frames[-1].filename.split(os.sep + 'bayesnas' + os.sep)[-1]}:{frames[-1].lineno}"
                     if frames else "<autograd engine>")
            self.sources[(name, where)] += 1
        return func(*args, **(kwargs or {}))


def measure(cfg, data, tasks):
    cfg = FitConfig(**{**cfg.to_dict(), "tasks": tasks})
    sampler, _ = task_samplers(cfg, data, torch.device("cpu"))
    torch.manual_seed(0)
    meta = build_meta_network(cfg, data.channels)
    opt = make_optimiser(meta, cfg)

    def step(it):
        batch = sampler.batch(list(range(it * tasks, (it + 1) * tasks)))
        with task_share(tasks, 0, tasks):
            svi_step(meta, opt, batch, cfg, it + 1)

    step(0)
    counter = _Counter()
    with counter:
        step(1)
    with torch.profiler.profile() as prof:
        step(2)
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    layout = sum(e.self_cpu_time_total for e in events
                 if e.key.startswith("aten::") and e.key[6:] in LAYOUT | ALLOCATION)
    layout_calls = sum(counter.sources.values())
    return {"tasks": tasks, "aten_calls": counter.total, "layout_calls": layout_calls,
            "layout_fraction_of_calls": layout_calls / counter.total,
            "self_ms": total / 1e3, "layout_and_allocation_self_ms": layout / 1e3,
            "layout_and_allocation_share_of_time": layout / total,
            "layout_sources": [{"op": op, "source": src, "calls": n}
                               for (op, src), n in counter.sources.most_common(15)]}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", default="2,8", help="comma-separated meta-batch sizes")
    parser.add_argument("--second-order", action="store_true")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    cfg = from_dict(FitConfig, load_config_file(os.path.join(ROOT, "configs", "omniglot_cpu.json"), FitConfig))
    if args.second_order:
        cfg.first_order = False
    data = open_data(cfg.data)
    rows = []
    for tasks in [int(t) for t in args.tasks.split(",") if t]:
        rows.append(measure(cfg, data, tasks))
        print(json.dumps({k: v for k, v in rows[-1].items() if k != "layout_sources"}), flush=True)
    result = {"torch": torch.__version__, "threads": args.threads,
              "machine": platform.processor() or platform.machine(),
              "config": "configs/omniglot_cpu.json", "first_order": cfg.first_order, "rows": rows}
    if args.json:
        write_json(args.json, result)


if __name__ == "__main__":
    main()
