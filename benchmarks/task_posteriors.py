"""How far do task posteriors move from the prior, and do they differ between alphabets? (issue 24)

    python benchmarks/task_posteriors.py --run runs/readme_s0 --tasks 20 \
        --json benchmarks/results/task_posteriors_readme_s0.json

For each group of the held-out split (an Omniglot alphabet) with at least ``ways`` classes,
``--tasks`` tasks whose classes all come from that group are adapted by the run's guide
(its inner steps, temperature and KL weight at the checkpoint). Reported per task: the mean
and largest ``|phi_N - alpha|`` over the 280 edge logits, and the cell derived from phi_N by
the run's rule. Then: how often a task's cell equals alpha's cell, and the mean share of kept
choices two task cells have in common (:func:`bayesnas.models.genotype_agreement`) for pairs
of tasks of the same alphabet and of different alphabets. BASE's claim beyond DARTS is a
task-conditioned architecture: cells of one alphabet agreeing more than cells of two would
be its sign.
"""
import argparse
import itertools
import sys
import time

import numpy as np
import torch

from bayesnas.analysis.run import load_run
from bayesnas.data import TaskSampler
from bayesnas.data.protocol import held_out_split
from bayesnas.data.store import SplitData
from bayesnas.fileio import write_json
from bayesnas.models import genotype_agreement, genotype_string


def group_split(split, group):
    """The classes of ``split`` whose group is ``group``, as a :class:`SplitData` of their own."""
    keep = [i for i, g in enumerate(split.groups) if g == group]
    images = torch.cat([split.class_images(i) for i in keep])
    return SplitData(images, [int(split.counts[i]) for i in keep], [split.class_names[i] for i in keep],
                     [group] * len(keep), name=f"{split.name}:{group}", path=split.path)


def _mean(values):
    return float(np.mean(values)) if values else None


def main(args):
    torch.set_num_threads(args.threads)
    run = load_run(args.run)
    cfg = run.config
    split = run.data.split(held_out_split(run.data, args.split))
    meta = run.meta_network()
    alpha = torch.stack([meta.alpha_normal, meta.alpha_reduce]).detach()
    alpha_cell = run.edge_posterior().derive()
    groups = sorted({g for g in split.groups if split.groups.count(g) >= cfg.ways})
    t0 = time.perf_counter()
    tasks = []
    for gi, group in enumerate(groups):
        sampler = TaskSampler(group_split(split, group), cfg.ways, cfg.shots, 1, seed=args.seed + gi,
                              image_size=cfg.image_size)
        for i in range(args.tasks):
            task = sampler.task(i)
            post = run.task_posterior(task.support_x, task.support_y, seed=args.seed + 1000 * gi + i)
            phi = torch.stack(list(post.logits))
            moved = (phi - alpha).abs()
            cell = post.derive()
            tasks.append({"group": group, "mean_abs_move": float(moved.mean()), "max_abs_move": float(moved.max()),
                          "cell": genotype_string(cell), "same_as_alpha": cell == alpha_cell, "_cell": cell})
        print(f"{group:<40} {args.tasks} tasks, mean |phi_N - alpha| "
              f"{_mean([t['mean_abs_move'] for t in tasks if t['group'] == group]):.4f}", flush=True)
    within, between = [], []
    for a, b in itertools.combinations(tasks, 2):
        (within if a["group"] == b["group"] else between).append(genotype_agreement(a["_cell"], b["_cell"]))
    for t in tasks:
        del t["_cell"]
    report = {
        "command": " ".join(["python", *sys.argv]), "run": args.run, "iteration": run.checkpoint_iteration(),
        "split": split.name, "groups": groups, "tasks_per_group": args.tasks,
        "seconds": round(time.perf_counter() - t0),
        "mean_abs_move": _mean([t["mean_abs_move"] for t in tasks]),
        "max_abs_move": max(t["max_abs_move"] for t in tasks),
        "share_same_as_alpha": _mean([float(t["same_as_alpha"]) for t in tasks]),
        "distinct_cells": len({t["cell"] for t in tasks}),
        "agreement_within_group": _mean(within), "agreement_between_groups": _mean(between),
        "tasks": tasks,
    }
    print(f"{len(tasks)} tasks of {len(groups)} groups: mean |phi_N - alpha| {report['mean_abs_move']:.4f} "
          f"(largest {report['max_abs_move']:.3f}); {100 * report['share_same_as_alpha']:.0f}% of task cells are "
          f"alpha's cell, {report['distinct_cells']} distinct; agreement within a group "
          f"{100 * (report['agreement_within_group'] or 0):.1f}%, between groups "
          f"{100 * (report['agreement_between_groups'] or 0):.1f}%")
    if args.json:
        write_json(args.json, report)
    return report


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", required=True, help="a fit run folder")
    p.add_argument("--tasks", type=int, default=20, help="tasks per group (alphabet)")
    p.add_argument("--split", default="val", help="the held-out split (choices are made on val)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", default=None)
    return p.parse_args(argv)


if __name__ == "__main__":
    main(parse())
