"""Signal in alpha's meta-gradient per estimator setting (issue 24, part 3).

    python benchmarks/bench_arch_gradient.py --run runs/early60 --run runs/readme_s0 --batches 24 \
        --json benchmarks/results/arch_gradient_signal.json

At each fit checkpoint given, alpha's meta-gradient is taken on the same ``--batches``
training meta-batches under every setting (:func:`bayesnas.analysis.signal.arch_gradients`;
the optimiser never steps) and judged against a sign-flip null
(:func:`bayesnas.analysis.signal.gradient_signal`): the share of the 280 coordinates with
|t| > 2, and the split-half correlation of the mean gradient. A setting carries signal when
both are clearly above their null; a setting whose gradient is at the null cannot be what
decides the architecture, however concentrated the posterior ends.
"""
import argparse
import sys
import time

import torch

from bayesnas.analysis.signal import arch_gradients, gradient_signal
from bayesnas.fileio import write_json

#: name -> FitConfig overrides (the run's own config otherwise)
SETTINGS = {
    "gumbel, relaxed KL (shipped)": {},
    "gumbel, categorical KL": {"edge_kl": "categorical"},
    "softmax": {"variant": "softmax"},
    "softmax, categorical KL": {"variant": "softmax", "edge_kl": "categorical"},
    "gumbel, second order": {"first_order": False},
    "gumbel, categorical KL, second order": {"edge_kl": "categorical", "first_order": False},
    # the estimators of bayesnas.inference.meta.EdgeSampling
    "gumbel per example": {"z_per_example": True},
    "straight-through": {"straight_through": True},
    "straight-through, per example": {"straight_through": True, "z_per_example": True},
    # MetaNAS on Omniglot: each task's steps from 1.0 down to 0.05 (the iteration's tau held at 1.0)
    "within-task annealing 1.0->0.05": {"tau_start": 1.0, "tau_end": 1.0, "inner_tau_end": 0.05},
    "pruning below 0.01": {"prune_below": 0.01},
}


def main(args):
    torch.set_num_threads(args.threads)
    chosen = {k: v for k, v in SETTINGS.items() if not args.settings or k in args.settings}
    report = {"command": " ".join(["python", *sys.argv]), "batches": args.batches, "flips": args.flips,
              "torch": torch.__version__, "threads": args.threads, "checkpoints": []}
    for run in args.run:
        entry = {"run": run, "settings": {}}
        for name, overrides in chosen.items():
            t0 = time.perf_counter()
            grads = arch_gradients(run, batches=args.batches, **overrides)
            s = gradient_signal(grads, flips=args.flips)
            entry["settings"][name] = {**s._asdict(), "overrides": overrides,
                                       "seconds": round(time.perf_counter() - t0, 1)}
            print(f"{run} | {name:<38} |t|>2 {100 * s.frac_t2:5.1f}% (null {100 * s.null_frac_t2:4.1f}%, "
                  f"q95 {100 * s.null_frac_t2_q95:4.1f}%)  split-half {s.split_half:+.2f} "
                  f"(null q95 {s.null_split_half_q95:+.2f})  rms {s.rms:.2e}  |mean| {s.mean_norm:.2e}", flush=True)
        report["checkpoints"].append(entry)
        if args.json:
            write_json(args.json, report)
    return report


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", action="append", required=True, help="a fit run folder (its last checkpoint; repeat)")
    p.add_argument("--batches", type=int, default=24)
    p.add_argument("--flips", type=int, default=1000)
    p.add_argument("--settings", action="append", default=[], help=f"only these of {list(SETTINGS)}")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", default=None)
    return p.parse_args(argv)


if __name__ == "__main__":
    main(parse())
