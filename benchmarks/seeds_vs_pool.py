"""Search seeds against a random-cell pool: the mean over seeds' cells, paired over test tasks (issue 24).

    python benchmarks/seeds_vs_pool.py --compare benchmarks/results/compare_pool_5w1s_searched.json \
        --group "by score, 3 seeds=ws-frozen_s0,ws-frozen_s1,ws-frozen_s2" --group softmax_s0=softmax_s0 \
        --json benchmarks/results/seeds_vs_pool_5w1s.json

``--compare``: a ``compare.json`` whose rows hold the pool's random cells (``kind`` "random")
and the searched cells, each with its per-task test accuracies on the same tasks. For each
group, the per-task mean over its cells is compared, paired over the tasks, with two
references: the pool's per-task median (the median over the random cells of each task's
accuracy, what ``compare --pool`` reports) and the pool's median cell (the per-task mean of
the one or two random cells whose mean accuracy is the pool's median). The first sits higher
than the pool's median accuracy: random cells fail on different tasks, and each task's median
skips the one or two that fail it.

``--compare`` may be repeated (rows merged by label). ``--val-eval NAME`` compares on
validation characters instead, where every choice of a search setting must be made: each
row's per-task accuracies become those that ``bayesnas evaluate RUN --split val --tasks 600
--json RUN/NAME`` wrote in its run folders (averaged over its seeds' runs; the same seeded
validation tasks for every run), and rows without that file are left out and listed.
"""
import argparse
import os
import sys

import numpy as np

from bayesnas.analysis.evaluate import mean_confidence_interval
from bayesnas.errors import RunError
from bayesnas.fileio import read_json, write_json
from bayesnas.training.records import read_evaluation


def median_cell(pool):
    """Per-task accuracies of the pool's median cell ``[tasks]``: the middle cell by mean accuracy
    (the mean of the two middle ones for an even pool)."""
    order = np.argsort(pool.mean(1), kind="stable")
    n = len(order)
    middle = order[(n - 1) // 2: n // 2 + 1]
    return pool[middle].mean(0)


def compare_groups(rows, groups):
    """``{group: {...}}`` of the mean over each group's cells against the pool (rows of kind "random")."""
    by_label = {r["label"]: r for r in rows}
    pool = np.stack([np.asarray(r["accuracies"], dtype=np.float64) for r in rows if r.get("kind") == "random"])
    if len(pool) < 3:
        raise SystemExit(f"the comparison holds {len(pool)} random cells; a pool needs at least 3")
    references = {"pool per-task median": np.median(pool, 0), "pool median cell": median_cell(pool)}
    out = {"pool": {"cells": len(pool), "median_accuracy": float(np.median(pool.mean(1))),
                    **{name: float(ref.mean()) for name, ref in references.items()}}}
    for name, labels in groups.items():
        missing = [label for label in labels if label not in by_label]
        if missing:
            raise SystemExit(f"--group {name}: no row labelled {', '.join(missing)} in the comparison")
        mean = np.stack([np.asarray(by_label[label]["accuracies"], dtype=np.float64) for label in labels]).mean(0)
        entry = {"cells": labels, "accuracy": float(mean.mean())}
        for ref_name, ref in references.items():
            difference, ci95 = mean_confidence_interval(mean - ref)
            entry[ref_name] = {"difference": difference, "ci95": ci95}
        out[name] = entry
    return out


def merged_rows(paths):
    """The rows of several compare JSONs, one per label (a label must name one cell throughout)."""
    rows = {}
    for path in paths:
        for row in read_json(path, ValueError, "compare JSON")["rows"]:
            seen = rows.get(row["label"])
            if seen is not None and seen.get("arch") != row.get("arch"):
                raise SystemExit(f"{path}: {row['label']} names another cell than an earlier --compare file")
            rows.setdefault(row["label"], row)
    return list(rows.values())


def with_val_eval(rows, name):
    """``(rows, left_out)``: rows whose accuracies are the mean over their ``run_dirs`` of the
    per-task accuracies in ``RUN/name``; rows lacking that file in any run folder are left out."""
    kept, left_out, tasks = [], [], None
    for row in rows:
        paths = [os.path.join(d, name) for d in row.get("run_dirs", [])]
        if not paths or not all(os.path.isfile(p) for p in paths):
            left_out.append(row["label"])
            continue
        try:
            evals = [read_evaluation(p) for p in paths]
        except RunError as e:
            raise SystemExit(str(e)) from None
        if any(e["split"] != "val" or "accuracies" not in e for e in evals):
            raise SystemExit(f"{row['label']}: {name} is not an evaluation on the val split with per-task accuracies")
        for e in evals:
            if tasks is not None and (e["tasks"], e["seed"]) != tasks:
                raise SystemExit(f"{row['label']}: {name} holds tasks={e['tasks']} of seed {e['seed']}, "
                                 f"other rows tasks={tasks[0]} of seed {tasks[1]}")
            tasks = (e["tasks"], e["seed"])
        accs = np.stack([np.asarray(e["accuracies"], dtype=np.float64) for e in evals]).mean(0)
        kept.append({**row, "accuracies": accs.tolist()})
    return kept, left_out


def main(args):
    rows = merged_rows(args.compare)
    left_out = []
    if args.val_eval:
        rows, left_out = with_val_eval(rows, args.val_eval)
    groups = {}
    for item in args.group:
        name, sep, labels = item.partition("=")
        if not sep or not name or not labels:
            raise SystemExit(f"--group {item!r}: expected NAME=LABEL[,LABEL...]")
        groups[name] = labels.split(",")
    for name, labels in groups.items():
        lacking = [label for label in labels if label in left_out]
        if lacking:
            raise SystemExit(f"--group {name}: {', '.join(lacking)} has no {args.val_eval} in its run folders")
    result = {"command": " ".join(["python", *sys.argv]), "split": "val" if args.val_eval else "test",
              **compare_groups(rows, groups)}
    if args.val_eval:
        result["left_out"] = left_out
        print(f"on validation ({args.val_eval}); left out, no such file: {', '.join(left_out) or 'none'}")
    pool = result["pool"]
    print(f"pool of {pool['cells']} random cells: median accuracy {100 * pool['median_accuracy']:.2f}%, "
          f"mean of the per-task medians {100 * pool['pool per-task median']:.2f}%")
    for name in groups:
        g = result[name]
        refs = "; ".join(f"vs {ref} {100 * g[ref]['difference']:+.2f} ± {100 * g[ref]['ci95']:.2f}"
                         for ref in ("pool median cell", "pool per-task median"))
        print(f"{name:<24} {100 * g['accuracy']:.2f}%  {refs}")
    if args.json:
        write_json(args.json, result)
    return result


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--compare", action="append", required=True,
                   help="compare.json with the pool's random cells and the searched cells (repeat to merge)")
    p.add_argument("--val-eval", default=None, metavar="NAME",
                   help="compare on the 600-task validation evaluations RUN/NAME of each row's runs")
    p.add_argument("--group", action="append", required=True, help="NAME=LABEL[,LABEL...] (repeat)")
    p.add_argument("--json", default=None)
    return p.parse_args(argv)


if __name__ == "__main__":
    main(parse())
