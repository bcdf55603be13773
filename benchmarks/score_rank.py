"""Does a meta-network rank cells like retraining does? (issue 24, part 1)

    python benchmarks/score_rank.py --run runs/readme_s0 --run runs/frozen_s0 \
        --compare benchmarks/results/compare_omniglot.json --pool benchmarks/results/pool_omniglot_5w1s.json \
        --tasks 100 --json benchmarks/results/score_rank_5w1s.json

Every cell retrained so far in one setting (the compare rows with a genotype: searched
cells, DARTS_V2, random cells; and the cells of a pool file) is scored by each fit run's
meta-network (:func:`bayesnas.analysis.score.score_cells`: the cell fixes the supernet's
architecture, the guide adapts the weights on each of ``--tasks`` validation tasks, the
query log-likelihood and accuracy are the score; the same tasks for every cell). The scores
are rank-correlated (Kendall tau-b with a permutation p-value, Spearman) with the cells'
retrained validation accuracy (their runs' best val_acc, validation characters: what a
choice of settings may look at) and, reported once, their test accuracy over 600 tasks.

``--random-cells N`` also scores compare's random-1 .. random-N that are not retrained yet
(scoring needs no retraining; they join the correlations once a pool holds them), and a
rerun with the same ``--json`` reuses the scores already there for the same run, tasks,
seed, samples and cell.
"""
import argparse
import json
import os
import platform
import sys
import time

import torch

from bayesnas.analysis.compare import architectures
from bayesnas.analysis.score import rank_correlation, score_cells
from bayesnas.fileio import write_json


def retrained_cells(compare_json, setting, pool_files):
    """``{label: row}`` of every retrained cell (a genotype, not Conv-4) of ``setting`` and the pools."""
    report = json.load(open(compare_json))
    rows = {}
    for s in report["settings"]:
        if s["name"] == setting:
            rows.update({r["label"]: r for r in s["result"]["rows"] if r["arch"] != "conv4"})
    for path in pool_files:
        for r in json.load(open(path))["rows"]:
            rows.setdefault(r["label"], r)
    if not rows:
        raise SystemExit(f"{compare_json}: no setting {setting!r} with cells")
    return rows


def _previous(path, args):
    """The scores an earlier report at ``path`` holds under the same protocol: ``{run: {label: entry}}``."""
    if not path or not os.path.exists(path):
        return {}
    old = json.load(open(path))
    if (old.get("tasks"), old.get("seed"), old.get("samples"), old.get("finetune", 0)) != \
            (args.tasks, args.seed, args.samples, args.finetune):
        return {}
    return {e["run"]: {lab: s for lab, s in e["scores"].items() if "arch" in s} for e in old.get("runs", [])}


def main(args):
    torch.set_num_threads(args.threads)
    cells = retrained_cells(args.compare, args.setting, args.pool)
    archs = {lab: r["arch"] for lab, r in cells.items()}
    for label, arch in architectures((), args.random_cells, ()):
        archs.setdefault(label, arch)
    labels, retrained = sorted(archs), sorted(cells)
    report = {"command": " ".join(["python", *sys.argv]), "setting": args.setting, "tasks": args.tasks,
              "seed": args.seed, "samples": args.samples, "finetune": args.finetune, "torch": torch.__version__,
              "threads": args.threads,
              "machine": platform.processor() or platform.machine(),
              "cells": {lab: {"val_acc": cells[lab]["val_acc"], "test_acc": cells[lab]["accuracy"],
                            "parameters": cells[lab].get("parameters")} for lab in retrained},
              "runs": []}
    previous = _previous(args.json, args)
    for run in args.run:
        t0 = time.perf_counter()
        old = {lab: s for lab, s in previous.get(run, {}).items() if lab in archs and s["arch"] == archs[lab]}
        todo = [lab for lab in labels if lab not in old]
        scores = dict(old)
        if todo:
            result = score_cells(run, {lab: archs[lab] for lab in todo}, tasks=args.tasks, seed=args.seed,
                                 samples=args.samples, finetune=args.finetune)
            scores.update({s.label: {"arch": archs[s.label], "loglik": s.mean_loglik, "loglik_ci95": s.loglik_ci95,
                                     "accuracy": s.mean_accuracy, "accuracy_ci95": s.accuracy_ci95,
                                     "iteration": result.iteration} for s in result.scores})
        entry = {"run": run, "seconds": round(time.perf_counter() - t0, 1), "scored_now": todo,
                 "iteration": next(iter(scores.values()))["iteration"], "scores": scores,
                 "correlated_over": retrained}
        for score in ("loglik", "accuracy"):
            x = [scores[lab][score] for lab in retrained]
            for target, key in (("val", "val_acc"), ("test", "test_acc")):
                r = rank_correlation(x, [report["cells"][lab][key] for lab in retrained])
                entry[f"{score}_vs_{target}"] = r._asdict()
        report["runs"].append(entry)
        print(f"{run} (iteration {entry['iteration']}, {entry['seconds']:.0f} s, {len(labels)} cells scored, "
              f"{len(retrained)} retrained):")
        for score in ("loglik", "accuracy"):
            for target in ("val", "test"):
                r = entry[f"{score}_vs_{target}"]
                print(f"  {score:>8} vs retrained {target:<4}: Kendall {r['kendall']:+.2f} (p {r['kendall_p']:.3f}), "
                      f"Spearman {r['spearman']:+.2f}")
        if args.json:
            write_json(args.json, report)
    return report


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", action="append", required=True, help="a fit run folder (repeat)")
    p.add_argument("--compare", default=os.path.join("benchmarks", "results", "compare_omniglot.json"))
    p.add_argument("--setting", default="5-way 1-shot")
    p.add_argument("--pool", action="append", default=[], help="a pool file whose cells join (repeat)")
    p.add_argument("--random-cells", type=int, default=10, help="also score compare's random-1 .. random-N")
    p.add_argument("--tasks", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--samples", type=int, default=4)
    p.add_argument("--finetune", type=int, default=0,
                   help="SVI steps on the weights with each cell fixed before it is scored (score_cells)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", default=None)
    return p.parse_args(argv)


if __name__ == "__main__":
    main(parse())
