"""The meta-iteration benchmark: seconds, peak memory, FLOPs and fraction of the machine's
matmul throughput of ``fit``'s SVI step, against reference implementations, in one run.

    python benchmarks/bench_fit.py --config default --json benchmarks/results/fit_default_cpu.json
    python benchmarks/bench_fit.py --config paper --impls low_memory --iterations 1 --warmup 0 --no-maml
    torchrun --standalone --nproc-per-node 2 benchmarks/bench_fit.py --config default --impls ours

What one run measures, on one config (``--config``; ``--tasks``, ``--inner-steps``
override), with ``--threads`` torch threads on ``--device``:

* ``matmul_gflops``: this machine's dense fp32 matmul throughput (1024x1024, median of 10).
* per implementation of the same SVI step (``--impls``):
  ``ours`` (the fused supernet), ``low_memory`` (ours, --low-memory: one task at a time,
  inner steps recomputed), ``naive`` (bayesnas/models/reference.py: one module per op per
  edge, loops over edges and tasks, PyTorch's own convolution derivatives; its parameters
  are copied from ours, so the function is identical). The implementations are timed
  alternately, iteration by iteration, so that all see the same load on a shared machine:
  median seconds per meta-iteration after ``--warmup`` untimed ones; FLOPs of one
  iteration (benchmarks/flops.py: torch.utils.flop_counter with the grouped-convolution
  gradient fixed); achieved GFLOP/s and its fraction of ``matmul_gflops``.
* peak memory: each implementation once more in a fresh process (one warm-up, if
  ``--warmup`` is not 0, and one timed iteration): peak resident set size on CPU (the whole process, so it includes
  ~0.3 GB of Python and torch; ``baseline_mb`` is the RSS before the first step), or
  torch.cuda.max_memory_allocated on CUDA.
* memory vs inner steps (``--slope-steps``, fresh processes): peak memory of ours and of
  low_memory at each N, and the least-squares slope in MB per inner step.
* ``maml_conv4``: a second-order MAML meta-step on Conv-4 (64 filters, 5-way 1-shot,
  15 queries, 4 tasks, 5 inner steps of 0.4, 28x28) done by bayesnas (``maml_loss``),
  by the ``higher`` library (``innerloop_ctx``, SGD) and by TorchOpt (functional
  ``torchopt.sgd`` + ``apply_updates``) when they are installed (``pip install
  'bayesnas[bench]'``): median seconds, tasks per second, and the largest difference of
  each peer's meta-gradient from ours.

* ``cuda_graph`` (``--cuda-graph``, one CUDA device, one process): ``ours`` against ``ours``
  with its loss and backward captured once as a CUDA graph and replayed
  (benchmarks/cuda_graph.py says what is captured and what stays outside), alternated
  iteration by iteration after the other measurements: median seconds of each and their
  ratio; and one step of each from the same parameters and seed (plus a second eager one,
  the run-to-run spread) with the largest differences of the loss, the meta-gradient and
  the parameters after the step, recorded, not asserted. A failure there is
  ``{"ok": false, "stage": ..., "error": ...}`` and the other figures stand; the JSON is
  also written before the capture starts.

Under torchrun only the ``ours`` timing runs; the figure is tasks per second of the job.
"""
import argparse
import importlib.metadata
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from bayesnas.config import FitConfig, from_dict, load_config_file  # noqa: E402
from bayesnas.data import open_data  # noqa: E402
from bayesnas.device import numerics, resolve_device  # noqa: E402
from bayesnas.fileio import write_json  # noqa: E402
from bayesnas.inference.model import task_share  # noqa: E402
from bayesnas.training.distributed import init_distributed  # noqa: E402
from bayesnas.training.loop import task_samplers  # noqa: E402
from bayesnas.training.search import build_meta_network, make_optimiser, step_gradients, svi_step  # noqa: E402
from benchmarks import cuda_graph  # noqa: E402
from benchmarks.flops import count_flops  # noqa: E402

#: what is timed is second-order meta-training with the paper's objective, independent of
#: FitConfig's CPU defaults (which take first-order steps): the settings the JSON in
#: benchmarks/results was measured with
SECOND_ORDER = dict(first_order=False, kl_weight=1.0, sigma_init=0.1, meta_lr=1e-3, arch_lr=1e-2, arch_warmup=0,
                    arch_schedule="constant", tau_end=0.5)
CONFIGS = {
    # "default" is the name the recorded results use: the earlier FitConfig defaults, C=2, 3 cells
    "default": FitConfig(channels=2, **SECOND_ORDER),
    # the paper's search shape at Omniglot size: C=16, 5 cells, 4 inner steps, 5-way 5-shot
    "paper": FitConfig(channels=16, cells=5, inner_steps=4, ways=5, shots=5, queries=5, **SECOND_ORDER),
    # what users run: the shipped search config (the README's main command) and plain `bayesnas fit`
    "search": from_dict(FitConfig, load_config_file(os.path.join(ROOT, "configs", "omniglot_cpu.json"), FitConfig)),
    "defaults": FitConfig(),
}
IMPLS = ("ours", "low_memory", "naive")


def matmul_gflops(device, size=1024, repeats=10):
    """Median dense fp32 matmul throughput (GFLOP/s) with the current thread setting."""
    a = torch.randn(size, size, device=device)
    b = torch.randn(size, size, device=device)
    times = []
    for i in range(repeats + 2):
        _sync(device)
        t0 = time.perf_counter()
        a @ b
        _sync(device)
        if i >= 2:
            times.append(time.perf_counter() - t0)
    return 2 * size**3 / statistics.median(times) / 1e9


def peak_rss_mb():
    """This process's peak resident set size in MB (VmHWM; ru_maxrss where /proc is missing).

    ru_maxrss alone would be wrong for the fresh processes: Linux carries the parent's
    high-water mark over fork and exec.
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def build(cfg, impl, in_channels, device):
    """MetaNetwork and optimiser of one implementation; every impl starts from the same W."""
    torch.manual_seed(0)
    meta = build_meta_network(cfg, in_channels)
    if impl == "naive":
        from bayesnas.models.reference import ReferenceSearchNetwork, copy_parameters

        net = ReferenceSearchNetwork(in_channels=in_channels, num_classes=cfg.ways, C=cfg.channels, layers=cfg.cells)
        copy_parameters(meta.net, net)
        naive = build_meta_network(cfg, in_channels, net=net)
        with torch.no_grad():
            naive.alpha_normal.copy_(meta.alpha_normal)
            naive.alpha_reduce.copy_(meta.alpha_reduce)
        meta = naive
    meta = meta.to(device)
    impl_cfg = FitConfig(**{**cfg.to_dict(), "low_memory": impl == "low_memory"})
    return meta, make_optimiser(meta, impl_cfg), impl_cfg


def settings(args):
    cfg = CONFIGS[args.config]
    cfg = FitConfig(**cfg.to_dict())
    if args.tasks:
        cfg.tasks = args.tasks
    if args.inner_steps is not None:
        cfg.inner_steps = args.inner_steps
    if args.second_order:
        cfg.first_order = False
    if args.data:
        cfg.data = args.data
    return cfg


def run_child(args):
    """One implementation in this fresh process: ``--warmup`` + 1 iterations; prints peak memory as JSON."""
    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    cfg = settings(args)
    data = open_data(cfg.data)
    sampler, _ = task_samplers(cfg, data, device)
    meta, opt, impl_cfg = build(cfg, args.child, data.channels, device)
    baseline = peak_rss_mb()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for it in range(args.warmup + 1):
        batch = sampler.batch(list(range(it * cfg.tasks, (it + 1) * cfg.tasks)))
        t0 = time.perf_counter()
        with task_share(cfg.tasks, 0, cfg.tasks):
            svi_step(meta, opt, batch, impl_cfg, it + 1)
        _sync(device)
        times.append(time.perf_counter() - t0)
    if device.type == "cuda":
        peak, baseline = torch.cuda.max_memory_allocated(device) / 2**20, 0.0
    else:
        peak = peak_rss_mb()
    print(json.dumps({"peak_memory_mb": peak, "baseline_mb": baseline, "seconds": times[-1]}))


def child_memory(args, impl, inner_steps=None):
    cmd = [sys.executable, os.path.abspath(__file__), "--child", impl, "--config", args.config,
           "--threads", str(args.threads), "--device", args.device, "--warmup", str(min(args.warmup, 1))]
    if args.second_order:
        cmd.append("--second-order")
    if args.tasks:
        cmd += ["--tasks", str(args.tasks)]
    if args.data:
        cmd += ["--data", args.data]
    steps = inner_steps if inner_steps is not None else args.inner_steps
    if steps is not None:
        cmd += ["--inner-steps", str(steps)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        return {"error": (out.stderr.strip().splitlines() or ["exit %d" % out.returncode])[-1]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def slope(xs, ys):
    """Least-squares slope of ys against xs."""
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sum((x - mx) ** 2 for x in xs)


def time_impls(args, cfg, ctx, data, sampler):
    """Alternate the implementations iteration by iteration; FLOPs of one more iteration each."""
    impls = {name: build(cfg, name, data.channels, ctx.device) for name in args.impls}
    start, stop = ctx.share(cfg.tasks)
    times = {name: [] for name in impls}
    for it in range(args.warmup + args.iterations):
        first = it * cfg.tasks
        batch = sampler.batch(list(range(first + start, first + stop)))
        for name, (meta, opt, impl_cfg) in impls.items():
            ctx.barrier()
            _sync(ctx.device)
            t0 = time.perf_counter()
            with task_share(cfg.tasks, start, stop):
                svi_step(meta, opt, batch, impl_cfg, it + 1, reduce_gradients=ctx.average_gradients)
            _sync(ctx.device)
            if it >= args.warmup:
                times[name].append(time.perf_counter() - t0)
    results = {}
    for name, (meta, opt, impl_cfg) in impls.items():
        median = statistics.median(times[name])
        row = {"seconds_per_iteration": median, "seconds_all": times[name], "tasks_per_second": cfg.tasks / median}
        if ctx.world_size == 1 and args.flops:
            batch = sampler.batch(list(range(cfg.tasks)))
            with task_share(cfg.tasks, 0, cfg.tasks):
                flops = count_flops(lambda: svi_step(meta, opt, batch, impl_cfg, 1))
            row.update(flops_per_iteration=flops, gflops_per_second=flops / median / 1e9)
        results[name] = row
    return results


def _max_abs_difference(xs, ys):
    return max((float((x.detach().double() - y.detach().double()).abs().max()) for x, y in zip(xs, ys, strict=True)),
               default=0.0)


def _grads(meta):
    return [p.grad if p.grad is not None else torch.zeros_like(p) for p in meta.meta_parameters()]


def same_step_check(impls, batch, seed=1234):
    """One step of each ``name -> (meta, optimiser, cfg, gradients)`` from the same state and seed:
    the loss, and each one's largest differences from the first one's loss, meta-gradient and parameters."""
    rows, (first, *others) = {}, list(impls)
    for name, (meta, opt, impl_cfg, gradients) in impls.items():
        torch.manual_seed(seed)  # every device's generator
        rows[name] = svi_step(meta, opt, batch, impl_cfg, 1, gradients=gradients)["loss"]
    ref = impls[first][0]
    out = {"seed": seed, "loss": rows, "max_abs_difference_from_" + first: {}}
    for name in others:
        meta = impls[name][0]
        out["max_abs_difference_from_" + first][name] = {
            "loss": abs(rows[name] - rows[first]),
            "gradient": _max_abs_difference(_grads(meta), _grads(ref)),
            "parameters_after_step": _max_abs_difference(meta.meta_parameters(), ref.meta_parameters())}
    out["largest_gradient"] = max(float(g.abs().max()) for g in _grads(ref))
    return out


def time_cuda_graph(args, cfg, data, sampler, device):
    """``ours`` eager against ``ours`` replaying a CUDA graph of its loss and backward; never raises.

    The section of the JSON: ``ok``; what is captured and what is not; the capture's seconds
    and the capture hazards seen in its first warm-up step; ``check`` (:func:`same_step_check`
    of eager, eager again and graph, with the numerical settings in force); the median
    seconds per iteration of both, alternated; or, where a stage failed, ``stage`` and ``error``.
    """
    out = {"ok": False, "captured": cuda_graph.CAPTURED, "outside": list(cuda_graph.OUTSIDE),
           "warmup_steps_before_capture": 2, "stage": "build"}
    try:
        (eager, eager_opt, impl_cfg), (again, again_opt, _), (graphed, graphed_opt, _) = (
            build(cfg, "ours", data.channels, device) for _ in range(3))
        batch = sampler.batch(list(range(cfg.tasks)))
        replay = cuda_graph.GraphedGradients(graphed, impl_cfg, batch)
        out["stage"] = "capture"
        _sync(device)
        t0 = time.perf_counter()
        out["hazards_in_warmup"] = replay.capture(warmup=out["warmup_steps_before_capture"])
        _sync(device)
        out["capture_seconds"] = time.perf_counter() - t0
        out["stage"] = "check"
        out["check"] = same_step_check({"eager": (eager, eager_opt, impl_cfg, step_gradients),
                                        "eager_again": (again, again_opt, impl_cfg, step_gradients),
                                        "graph": (graphed, graphed_opt, impl_cfg, replay)}, batch)
        out["check"]["numerics"] = numerics(device)
        out["stage"] = "timing"
        runs = {"eager": (eager, eager_opt, step_gradients), "graph": (graphed, graphed_opt, replay)}
        times = {name: [] for name in runs}
        for it in range(args.warmup + args.iterations):
            first = (it + 1) * cfg.tasks
            batch = sampler.batch(list(range(first, first + cfg.tasks)))
            for name, (meta, opt, gradients) in runs.items():
                _sync(device)
                t0 = time.perf_counter()
                svi_step(meta, opt, batch, impl_cfg, it + 2, gradients=gradients)
                _sync(device)
                if it >= args.warmup:
                    times[name].append(time.perf_counter() - t0)
        medians = {name: statistics.median(t) for name, t in times.items()}
        out.update(seconds_per_iteration=medians, seconds_all=times,
                   eager_over_graph=medians["eager"] / medians["graph"], ok=True)
        del out["stage"]
    except Exception as error:  # recorded in the section: the figures measured before it stand
        out["error"] = cuda_graph.describe(error)
    return out


def cuda_graph_refusal(args):
    """Why ``--cuda-graph`` cannot run with these arguments on this machine, or None."""
    if not torch.cuda.is_available():
        build = "a CPU build" if not torch.backends.cuda.is_built() else "a CUDA build"
        return f"needs a CUDA device, and this torch ({torch.__version__}, {build}) sees none"
    if resolve_device(args.device).type != "cuda":
        return f"times a CUDA graph: run it with --device cuda (not --device {args.device})"
    if args.sweep_tasks:
        return "not with --sweep-tasks (it times the config's own meta-batch size)"
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return "one process only (not under torchrun)"
    return None


def sweep_tasks(args, ctx, data):
    """tasks_per_s (alternated timings) and peak memory (fresh processes) of each impl at each T."""
    rows = []
    for tasks in [int(t) for t in args.sweep_tasks.split(",") if t]:
        args.tasks = tasks
        cfg = settings(args)
        sampler, _ = task_samplers(cfg, data, ctx.device)
        impls = time_impls(args, cfg, ctx, data, sampler)
        for name in impls:
            impls[name].pop("seconds_all", None)
            impls[name].update(child_memory(args, name))
            if "gflops_per_second" in impls[name]:
                impls[name]["fraction_of_matmul"] = impls[name]["gflops_per_second"] / args.matmul_gflops
        row = {"tasks": tasks, "impls": impls}
        if "ours" in impls and "naive" in impls:
            row["ours_over_naive"] = impls["ours"]["tasks_per_second"] / impls["naive"]["tasks_per_second"]
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


def extrapolated_flops(args, cfg, data):
    """FLOPs of one default-path iteration from two 1-task counts: T * (a + b * N).

    Every task of a meta-batch has the same shapes and every inner step the same work, so
    the count is linear in tasks and in steps; each count holds one task's graph of a few
    steps only.
    """
    n1, n2 = (int(v) for v in args.flops_from_steps.split(","))
    counts = {}
    for n in (n1, n2):
        small = FitConfig(**{**cfg.to_dict(), "tasks": 1, "inner_steps": n})
        sampler, _ = task_samplers(small, data, torch.device(args.device))
        meta, opt, impl_cfg = build(small, "ours", data.channels, torch.device(args.device))
        batch = sampler.batch([0])
        with task_share(1, 0, 1):
            counts[n] = count_flops(lambda: svi_step(meta, opt, batch, impl_cfg, 1))
    per_step = (counts[n2] - counts[n1]) / (n2 - n1)
    per_task = counts[n1] + per_step * (cfg.inner_steps - n1)
    return {"one_task_counts": {str(k): v for k, v in counts.items()}, "per_inner_step_per_task": per_step,
            "total": per_task * cfg.tasks}


def maml_conv4(args, device, repeats=5):
    """Second-order MAML meta-step on Conv-4: bayesnas vs ``higher`` and TorchOpt (when installed).

    All three take the same 5 SGD steps of 0.4 per task from the same weights on the same
    tasks and return the meta-gradient of the mean query loss; the row records each one's
    median seconds, the ratios to bayesnas and the largest difference of their gradients.
    """
    import torch.nn.functional as F
    from torch.func import functional_call

    from bayesnas.data import TaskSampler
    from bayesnas.models import Conv4
    from bayesnas.training.retrain import maml_loss, meta_parameters

    steps, lr, tasks = 5, 0.4, 4
    data = open_data(None)
    sampler = TaskSampler(data.split("train"), ways=5, shots=1, queries=15, seed=0, device=device)
    torch.manual_seed(0)
    net = Conv4(in_channels=1, num_classes=5, hidden=64, image_size=28).to(device)
    params = list(net.parameters())
    names = [n for n, _ in net.named_parameters()]

    def ours(batch):
        loss, _ = maml_loss(net, meta_parameters(net), batch, steps, lr)
        return torch.autograd.grad(loss, params)

    def with_higher(batch):
        import higher

        inner = torch.optim.SGD(net.parameters(), lr=lr)
        total = 0.0
        for t in range(batch.support_x.shape[0]):
            with higher.innerloop_ctx(net, inner, copy_initial_weights=False) as (fnet, diffopt):
                for _ in range(steps):
                    diffopt.step(F.cross_entropy(fnet(batch.support_x[t]), batch.support_y[t]))
                total = total + F.cross_entropy(fnet(batch.query_x[t]), batch.query_y[t])
        return torch.autograd.grad(total / batch.support_x.shape[0], params)

    def with_torchopt(batch):  # TorchOpt's functional API: sgd transformation + apply_updates
        import torchopt

        sgd = torchopt.sgd(lr=lr)
        total = 0.0
        for t in range(batch.support_x.shape[0]):
            fast = tuple(params)
            state = sgd.init(fast)
            for _ in range(steps):
                loss = F.cross_entropy(functional_call(net, dict(zip(names, fast, strict=True)), (batch.support_x[t],)),
                                       batch.support_y[t])
                grads = torch.autograd.grad(loss, fast, create_graph=True)
                updates, state = sgd.update(grads, state, inplace=False)
                fast = torchopt.apply_updates(fast, updates, inplace=False)
            query = functional_call(net, dict(zip(names, fast, strict=True)), (batch.query_x[t],))
            total = total + F.cross_entropy(query, batch.query_y[t])
        return torch.autograd.grad(total / batch.support_x.shape[0], params)

    fns = {"bayesnas": ours}
    versions = {}
    for peer, module, fn in (("higher", "higher", with_higher), ("torchopt", "torchopt", with_torchopt)):
        try:
            versions[peer] = importlib.metadata.version(module)
        except importlib.metadata.PackageNotFoundError:
            continue
        fns[peer] = fn
    batch = sampler.batch(list(range(tasks)))
    grads = {name: fn(batch) for name, fn in fns.items()}
    times = {name: [] for name in fns}
    for r in range(repeats):
        batch = sampler.batch(list(range((r + 1) * tasks, (r + 2) * tasks)))
        for name, fn in fns.items():
            _sync(device)
            t0 = time.perf_counter()
            fn(batch)
            _sync(device)
            times[name].append(time.perf_counter() - t0)
    ours_s = statistics.median(times["bayesnas"])
    row = {"settings": {"hidden": 64, "ways": 5, "shots": 1, "queries": 15, "tasks": tasks, "inner_steps": steps,
                        "inner_lr": lr, "image": 28, "order": "second"},
           "bayesnas_seconds": ours_s, "tasks_per_s": {"bayesnas": tasks / ours_s}}
    for peer in ("higher", "torchopt"):
        row[f"{peer}_installed"] = peer in fns
        if peer not in fns:
            continue
        peer_s = statistics.median(times[peer])
        row[f"{peer}_seconds"] = peer_s
        row["tasks_per_s"][peer] = tasks / peer_s
        row[f"{peer}_over_bayesnas"] = peer_s / ours_s
        row[f"{peer}_max_abs_gradient_difference"] = max((a - b).abs().max().item()
                                                         for a, b in zip(grads["bayesnas"], grads[peer], strict=True))
        row[f"{peer}_version"] = versions[peer]
    return row


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", choices=sorted(CONFIGS), default="default")
    parser.add_argument("--iterations", type=int, default=3, help="timed iterations per implementation")
    parser.add_argument("--warmup", type=int, default=1, help="untimed iterations first")
    parser.add_argument("--tasks", type=int, default=None, help="override tasks per meta-batch")
    parser.add_argument("--inner-steps", type=int, default=None, help="override inner steps N")
    parser.add_argument("--second-order", action="store_true",
                        help="differentiate through the inner steps (the shipped 'search' and 'defaults' configs "
                             "take first-order steps)")
    parser.add_argument("--impls", default="ours,low_memory,naive",
                        help=f"comma-separated subset of {','.join(IMPLS)} to time")
    parser.add_argument("--memory-impls", default=None,
                        help="implementations whose peak memory is measured in a fresh process [default: --impls]")
    parser.add_argument("--slope-steps", default="1,2,4",
                        help="inner steps at which to measure peak memory of ours and low_memory ('' = skip)")
    parser.add_argument("--no-flops", dest="flops", action="store_false", help="skip the FLOP count")
    parser.add_argument("--flops-from-steps", default=None,
                        help="instead of counting a whole iteration per implementation, count the default "
                             "path's FLOPs for 1 task at these two inner-step counts (e.g. 1,2) and extrapolate "
                             "linearly to the config's tasks and steps (for shapes whose count is too big to hold)")
    parser.add_argument("--no-maml", dest="maml", action="store_false", help="skip the Conv-4 MAML comparison")
    parser.add_argument("--sweep-tasks", default=None,
                        help="comma-separated meta-batch sizes T (e.g. 2,4,8,16): instead of the single-T "
                             "measurements, time the impls alternated at each T and measure each one's peak "
                             "memory at each T in a fresh process (the JSON's 'sweep')")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--data", default=None, help="HDF5 data file instead of the config's (e.g. 84x84 images)")
    parser.add_argument("--json", default=None)
    parser.add_argument("--cuda-graph", action="store_true",
                        help="also time ours with its loss and backward replayed from a CUDA graph, beside ours "
                             "eager (one CUDA device, one process; benchmarks/cuda_graph.py)")
    parser.add_argument("--child", choices=IMPLS, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.impls = [s for s in args.impls.split(",") if s]
    unknown = sorted(set(args.impls) - set(IMPLS))
    if unknown:
        parser.error(f"--impls: unknown {', '.join(unknown)} (expected a subset of {', '.join(IMPLS)})")
    if args.child:
        return run_child(args)
    if args.cuda_graph and (why := cuda_graph_refusal(args)):
        sys.exit(f"bench_fit.py --cuda-graph: {why}")

    torch.set_num_threads(args.threads)
    ctx = init_distributed(resolve_device(args.device))
    cfg = settings(args)
    data = open_data(cfg.data)
    sampler, _ = task_samplers(cfg, data, ctx.device)
    result = {"config": args.config, "settings": cfg.to_dict(), "device": str(ctx.device), "threads": args.threads,
              "processes": ctx.world_size, "torch": torch.__version__,
              "machine": platform.processor() or platform.machine(), "cpu_count": os.cpu_count()}
    if ctx.is_main:
        result["matmul_gflops"] = matmul_gflops(ctx.device)
    if args.sweep_tasks:
        args.matmul_gflops = result.get("matmul_gflops")
        result["sweep"] = sweep_tasks(args, ctx, data)
        if ctx.is_main and args.maml:
            result["maml_conv4"] = maml_conv4(args, ctx.device)
    else:
        single_size(args, cfg, ctx, data, sampler, result)
        if args.cuda_graph:
            if args.json:  # the figures so far outlive a capture that crashes or runs out of time
                write_json(args.json, result)
            result["cuda_graph"] = time_cuda_graph(args, cfg, data, sampler, ctx.device)
    if ctx.is_main:
        print(json.dumps(result, indent=2))
        if args.json:
            write_json(args.json, result)
    ctx.close()


def single_size(args, cfg, ctx, data, sampler, result):
    """The measurements at the config's T: timings, FLOPs, peak memory, memory vs inner steps, Conv-4 MAML."""
    result["impls"] = time_impls(args, cfg, ctx, data, sampler)
    if ctx.is_main and args.flops_from_steps:
        result["flops_per_iteration_extrapolated"] = extrapolated_flops(args, cfg, data)
    if not (ctx.is_main and ctx.world_size == 1):
        return
    peak = result["matmul_gflops"]
    for row in result["impls"].values():
        if "gflops_per_second" in row:
            row["fraction_of_matmul"] = row["gflops_per_second"] / peak
    mem_impls = args.impls if args.memory_impls is None else [s for s in args.memory_impls.split(",") if s]
    for name in mem_impls:
        result["impls"].setdefault(name, {}).update(child_memory(args, name))
    if "ours" in result["impls"] and "naive" in result["impls"]:
        result["naive_over_ours"] = (result["impls"]["naive"]["seconds_per_iteration"]
                                     / result["impls"]["ours"]["seconds_per_iteration"])
    steps = [int(s) for s in args.slope_steps.split(",") if s]
    if len(steps) >= 2:
        curve = {"inner_steps": steps}
        for name in ("ours", "low_memory"):
            peaks = [child_memory(args, name, n).get("peak_memory_mb") for n in steps]
            curve[f"{name}_peak_mb"] = peaks
            if None not in peaks:
                curve[f"{name}_slope_mb_per_step"] = slope(steps, peaks)
        result["memory_vs_inner_steps"] = curve
    if args.maml:
        result["maml_conv4"] = maml_conv4(args, ctx.device)

if __name__ == "__main__":
    main()
