"""Host syncs per training step, and the step's time, before and after a change, side by side in one run.

    python benchmarks/bench_syncs.py --before main --json benchmarks/results/syncs_cpu.json

A host sync is a point where Python reads a value off a tensor, so the host waits for the
device: ``.item()``, ``bool(t)``/``if t:``, ``float(t)``, ``.tolist()``, ``.numpy()``, and
indexing by a boolean mask (its output size depends on the data). On a GPU each one
drains the queue of launched kernels; on the CPU it costs little, but it can be counted:
the first ones all dispatch ``aten::_local_scalar_dense``, which a TorchDispatchMode sees;
``tolist``/``numpy`` are counted by wrapping the Tensor methods, boolean-mask indexing
and ``nonzero``/``masked_select`` as aten calls. Each sync is attributed to the innermost
frame of bayesnas, Pyro or torch.distributions that made it.

What one run does: the tree at git ref ``--before`` (extracted with ``git archive``) and
this tree ("after") each run in their own worker process, in ``--rounds`` alternating
rounds; a worker builds the default ``FitConfig`` (or ``--config search``) meta-network
with the same seed, takes ``--warmup`` untimed SVI steps, counts the syncs of one step,
and times ``--steps`` steps (``--toggle-validation``: this tree only, the distributions'
checks on and off alternating step by step in one process). Reported: syncs per step (by place, and in total less Adam's
reads of its step counter, a CPU tensor on every device, so never a device sync) and the
median step time of each tree over all rounds, and their ratio, with ``--threads`` torch
threads.
"""
import argparse
import collections
import json
import os
import platform
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
import traceback

import torch
from torch.utils._python_dispatch import TorchDispatchMode

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_SCALAR_READS = {torch.ops.aten._local_scalar_dense.default, torch.ops.aten.nonzero.default,
                 torch.ops.aten.masked_select.default}
_PLACES = ("/bayesnas/", "/pyro/", "/torch/distributions/", "/torch/optim/", "/torch/nn/utils/")


def _place():
    for frame in reversed(traceback.extract_stack()[:-2]):
        if any(p in frame.filename.replace(os.sep, "/") for p in _PLACES):
            name = frame.filename.replace(os.sep, "/")
            for cut in ("/site-packages/", "/bayesnas_before/"):
                name = name.split(cut)[-1]
            return f"{name[name.find('bayesnas/') if 'bayesnas/' in name else 0:]}:{frame.lineno}"
    return "elsewhere"


class SyncCounter(TorchDispatchMode):
    """Counts host syncs in its block: ``counter.total``, ``counter.places`` (a Counter by file:line)."""

    def __init__(self):
        super().__init__()
        self.places = collections.Counter()
        self._wrapped = {}

    @property
    def total(self):
        """Syncs counted, less Adam's step-counter reads (torch/optim: a CPU tensor on every device)."""
        return sum(n for place, n in self.places.items() if not place.startswith("torch/optim/"))

    def _record(self):
        self.places[_place()] += 1

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        indices = args[1] if len(args) > 1 else []
        if func in _SCALAR_READS or (func is torch.ops.aten.index.Tensor and any(
                torch.is_tensor(i) and i.dtype == torch.bool for i in indices if i is not None)):
            self._record()
        return func(*args, **kwargs)

    def __enter__(self):
        for name in ("tolist", "numpy"):
            real = getattr(torch.Tensor, name)
            self._wrapped[name] = real

            def wrapper(tensor, *a, _real=real, **k):
                self._record()
                return _real(tensor, *a, **k)

            setattr(torch.Tensor, name, wrapper)
        return super().__enter__()

    def __exit__(self, *exc):
        for name, real in self._wrapped.items():
            setattr(torch.Tensor, name, real)
        return super().__exit__(*exc)


def count_syncs(action):
    """``(result, counter)``: ``action()`` run under a :class:`SyncCounter`."""
    with SyncCounter() as counter:
        result = action()
    return result, counter


def _setup(config, seed=0):
    from bayesnas.config import FitConfig, from_dict, load_config_file
    from bayesnas.data import open_data
    from bayesnas.training.loop import task_samplers
    from bayesnas.training.search import build_meta_network, make_optimiser

    if config == "search":
        cfg = from_dict(FitConfig, load_config_file(os.path.join(ROOT, "configs", "omniglot_cpu.json"), FitConfig))
    else:
        cfg = FitConfig()
    data = open_data(cfg.data)
    sampler, _ = task_samplers(cfg, data, torch.device("cpu"))
    torch.manual_seed(seed)
    meta = build_meta_network(cfg, data.channels)
    return cfg, meta, make_optimiser(meta, cfg), sampler


def toggled_validation(args):
    """This tree's SVI step with the distributions' argument checks on and off, alternating step by step
    in one process (the fairest comparison on a busy machine): median seconds of each."""
    from bayesnas.training.search import svi_step

    cfg, meta, optimiser, sampler = _setup(args.config)
    seconds = {"1": [], "0": []}
    for i in range(args.warmup + 2 * args.steps):
        flag = "1" if i % 2 == 0 else "0"
        os.environ["BAYESNAS_VALIDATE"] = flag
        t0 = time.perf_counter()
        svi_step(meta, optimiser, sampler.batch(range(i * cfg.tasks, (i + 1) * cfg.tasks)), cfg, i + 1)
        if i >= args.warmup:
            seconds[flag].append(time.perf_counter() - t0)
    on, off = statistics.median(seconds["1"]), statistics.median(seconds["0"])
    return {"median_step_seconds_validation_on": on, "median_step_seconds_validation_off": off,
            "speedup": on / off, "steps_timed_each": len(seconds["0"])}


def worker(args):
    """One tree's figures: syncs of one SVI step and the seconds of ``args.steps`` steps (JSON on stdout)."""
    from bayesnas.training.search import svi_step

    torch.set_num_threads(args.threads)
    cfg, meta, optimiser, sampler = _setup(args.config)
    batches = [sampler.batch(range(i * cfg.tasks, (i + 1) * cfg.tasks)) for i in range(args.warmup + args.steps + 1)]
    iteration = 0
    for _ in range(args.warmup):
        iteration += 1
        svi_step(meta, optimiser, batches[iteration - 1], cfg, iteration)
    iteration += 1
    _, counter = count_syncs(lambda: svi_step(meta, optimiser, batches[iteration - 1], cfg, iteration))
    seconds = []
    for _ in range(args.steps):
        iteration += 1
        t0 = time.perf_counter()
        svi_step(meta, optimiser, batches[iteration - 1], cfg, iteration)
        seconds.append(time.perf_counter() - t0)
    import bayesnas

    json.dump({"syncs": counter.total, "places": dict(counter.places.most_common()), "seconds": seconds,
               "bayesnas": bayesnas.__file__}, sys.stdout)


def extract(ref, into):
    """The tree of git ``ref`` of this repository, extracted under ``into``; its root."""
    archive = os.path.join(into, "tree.tar")
    with open(archive, "wb") as f:
        subprocess.run(["git", "-C", ROOT, "archive", ref], stdout=f, check=True)
    root = os.path.join(into, "bayesnas_before")
    with tarfile.open(archive) as tar:
        tar.extractall(root, filter="data")
    return root


def run_worker(tree, args):
    env = dict(os.environ, PYTHONPATH=tree, BAYESNAS_VALIDATE=os.environ.get("BAYESNAS_VALIDATE", ""))
    command = [sys.executable, os.path.join(ROOT, "benchmarks", "bench_syncs.py"), "--worker", "--config", args.config,
               "--threads", str(args.threads), "--warmup", str(args.warmup), "--steps", str(args.steps)]
    done = subprocess.run(command, env=env, cwd=tree, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"worker on {tree} failed:\n{done.stderr}")
    return json.loads(done.stdout)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", default="main", help="git ref of the 'before' tree [main]")
    parser.add_argument("--config", choices=("default", "search"), default="default",
                        help="FitConfig() or configs/omniglot_cpu.json [default]")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=5, help="timed steps per round and tree")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", default=None, help="write the figures here")
    parser.add_argument("--toggle-validation", action="store_true",
                        help="only this tree, validation on and off alternating step by step in one process")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return worker(args)
    command = "python benchmarks/bench_syncs.py " + " ".join(argv if argv is not None else sys.argv[1:])
    if args.toggle_validation:
        torch.set_num_threads(args.threads)
        result = {"command": command, "config": args.config, "threads": args.threads, "device": "cpu",
                  "torch": torch.__version__, **toggled_validation(args)}
        return _report(result, args.json)
    with tempfile.TemporaryDirectory() as tmp:
        trees = {"before": extract(args.before, tmp), "after": ROOT}
        runs = {name: [] for name in trees}
        for _ in range(args.rounds):
            for name, tree in trees.items():
                runs[name].append(run_worker(tree, args))
    result = {"command": command,
              "before": args.before, "after": subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"],
                                                             capture_output=True, text=True).stdout.strip(),
              "config": args.config, "threads": args.threads, "device": "cpu", "machine": platform.processor() or
              platform.machine(), "torch": torch.__version__,
              "validation_env": os.environ.get("BAYESNAS_VALIDATE", "")}
    for name, rounds in runs.items():
        seconds = [s for r in rounds for s in r["seconds"]]
        result[name] = {"syncs_per_step": rounds[0]["syncs"], "syncs_by_place": rounds[0]["places"],
                        "median_step_seconds": statistics.median(seconds), "steps_timed": len(seconds)}
    result["speedup"] = result["before"]["median_step_seconds"] / result["after"]["median_step_seconds"]
    return _report(result, args.json)


def _report(result, path):
    text = json.dumps(result, indent=1)
    print(text)
    if path:
        from bayesnas.fileio import write_json  # here, not at the top: a worker imports its own tree's bayesnas

        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        write_json(path, result)
    return result


if __name__ == "__main__":
    main()
