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

``--val-eval NAME`` adds a less noisy validation target: the accuracy that ``bayesnas evaluate
RUN --split val --tasks 600 --json RUN/NAME`` wrote in each retrained cell's run folder (600
validation tasks instead of the 20 a run's best val_acc rests on). With several ``--run`` the
runs' scores are also averaged per cell (``mean_of_runs``: search seeds as one ensemble).

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
from bayesnas.errors import RunError
from bayesnas.fileio import write_json
from bayesnas.training.records import read_evaluation


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
    if args.val_eval:
        for lab in retrained:
            found = val_evaluation(cells[lab], args.val_eval)
            if found is not None:
                report["cells"][lab]["val_eval"] = found
        report["val_eval"] = args.val_eval
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
        correlate(entry, scores, report["cells"], retrained)
        report["runs"].append(entry)
        show(f"{run} (iteration {entry['iteration']}, {entry['seconds']:.0f} s, {len(labels)} cells scored, "
             f"{len(retrained)} retrained):", entry)
        if args.json:
            write_json(args.json, report)
    if len(report["runs"]) > 1:
        # the runs' scores averaged per cell: seeds of one setting as one meta-network ensemble
        mean = {lab: {score: sum(e["scores"][lab][score] for e in report["runs"]) / len(report["runs"])
                      for score in ("loglik", "accuracy")} for lab in labels}
        report["mean_of_runs"] = {"runs": [e["run"] for e in report["runs"]], "scores": mean}
        correlate(report["mean_of_runs"], mean, report["cells"], retrained)
        show(f"mean of the {len(report['runs'])} runs' scores:", report["mean_of_runs"])
        if args.json:
            write_json(args.json, report)
    return report


def val_evaluation(row, name):
    """A retrained cell's accuracy from the evaluation JSON ``name`` in its runs' folders (mean over
    seeds), with the tasks and split it was measured on; None when a run lacks it."""
    found = []
    for run_dir in row.get("run_dirs") or []:
        path = os.path.join(run_dir, name)
        if not os.path.exists(path):
            return None
        try:
            found.append(read_evaluation(path))  # checked: finite accuracies in [0, 1], one per task
        except RunError as e:
            raise SystemExit(str(e)) from None
    if not found:
        return None
    return {"accuracy": sum(f["accuracy"] for f in found) / len(found), "split": found[0]["split"],
            "tasks": found[0]["tasks"], "seed": found[0]["seed"], "runs": len(found)}


def correlate(entry, scores, cells, retrained):
    """Kendall and Spearman of each score against the retrained cells' validation and test accuracy
    (and the --val-eval accuracy, over the cells that have it) into ``entry``."""
    targets = [("val", lambda c: c["val_acc"]), ("test", lambda c: c["test_acc"])]
    if any("val_eval" in cells[lab] for lab in retrained):
        targets.append(("val_eval", lambda c: c["val_eval"]["accuracy"] if "val_eval" in c else None))
    for score in ("loglik", "accuracy"):
        for target, read in targets:
            have = [lab for lab in retrained if read(cells[lab]) is not None]
            r = rank_correlation([scores[lab][score] for lab in have], [read(cells[lab]) for lab in have])
            entry[f"{score}_vs_{target}"] = {**r._asdict(), "cells": len(have)}


def show(title, entry):
    print(title)
    for key, r in entry.items():
        if key.startswith(("loglik_vs", "accuracy_vs")):
            score, target = key.split("_vs_")
            print(f"  {score:>8} vs retrained {target:<8} ({r['cells']:>2} cells): Kendall {r['kendall']:+.2f} "
                  f"(p {r['kendall_p']:.3f}), Spearman {r['spearman']:+.2f}")


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
    p.add_argument("--val-eval", default=None, metavar="NAME",
                   help="also correlate with the accuracy in the evaluation JSON NAME in each retrained cell's run "
                        "folders (e.g. one written by `bayesnas evaluate RUN --split val --tasks 600 --json`), over "
                        "the cells whose runs all have it")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", default=None)
    return p.parse_args(argv)


if __name__ == "__main__":
    main(parse())
