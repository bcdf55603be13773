"""The ``compare`` table (paper's Table 1 layout) on the embedded Omniglot data, per few-shot setting.

    python benchmarks/compare_omniglot.py [--genotype runs/fit-a] [--iterations 100] [--json out.json]
    python benchmarks/compare_omniglot.py --protocol --genotype runs/fit-s0 --genotype runs/fit-s1 --iterations N
    python benchmarks/compare_omniglot.py --table benchmarks/results/compare_omniglot.json

For each setting (``--settings``: 5w1s, 5w5s, 20w1s), every architecture (the given searched
cells, DARTS_V2, Conv-4 and ``--random-cells`` cells drawn uniformly from the search space
through the rule derive-cell keeps: two distinct inputs per node, a non-``none`` op on each)
is retrained with second-order MAML under one identical budget (iterations, tasks, inner
steps, layers, seeds) and evaluated on the same seeded test tasks of held-out characters.
Each architecture's width is chosen so its trainable parameter count is within ±10% of one
target (``--param-target``; default the largest row's count at ``--channels``;
``--no-match-params`` trains every row at ``--channels``). With several ``--seeds``,
accuracies are averaged over the seeds per test task before the mean and 95% CI over tasks
are taken, and the "vs" column is each architecture's paired per-task difference from the
first (docs/protocol.md). Prints one table per setting and writes everything, with
the budget, the learning curves and wall times, as JSON.

``--protocol`` runs issue 12's comparison: the three settings, 600 test tasks, at least 5
random cells, matched parameters, at least 2 searched cells (from independent search seeds),
written to ``benchmarks/results/compare_omniglot.json``. It does not choose the iterations:
retrain until validation accuracy has plateaued, which the JSON's ``val_curves`` show and each
row's ``val_rise`` measures (mean validation accuracy over the last 100 iterations minus the
same 300 iterations earlier; a setting's ``still_learning`` lists the rows above 0.02).
``--iterations`` takes one budget or one per setting (``5w1s=1200,20w1s=1600``); rerun with
a larger budget on the same ``--out`` and every run continues where it stopped, and a
finished run's saved evaluation is reused. ``--max-iterations`` (same forms) trains each run
until it has plateaued instead: ``--iterations`` first, then ``--extend-by`` more at a time
while its val rise is above 0.02, up to that cap; each row's ``iterations`` says what it got.
``--table JSON`` prints a report's tables as Markdown (docs/results.md's): a summary of every
setting's accuracies, the random-cell median and how many searched cells are above it, then
one table per setting.

Without ``--protocol`` the default budget is sized to finish in well under an hour on a
2-core CPU with one torch thread; it trains far less than the paper (30,000 iterations), so
the numbers compare architectures at a small budget, not at convergence.
"""
import argparse
import json
import os
import platform
import sys
import time

import torch

from bayesnas.analysis.compare import (EXTEND_BY, PLATEAU_LAG, PLATEAU_RISE, PLATEAU_WINDOW, budget_text, compare,
                                       format_compare_table, validation_rise)
from bayesnas.config import RetrainConfig
from bayesnas.fileio import write_json
from bayesnas.viz import plot_comparison
from bayesnas.viz.compare import random_median, row_kind

SETTINGS = {"5w1s": {"name": "5-way 1-shot", "ways": 5, "shots": 1},
            "5w5s": {"name": "5-way 5-shot", "ways": 5, "shots": 5},
            "20w1s": {"name": "20-way 1-shot", "ways": 20, "shots": 1}}
#: what --protocol fixes (issue 12, part 5)
PROTOCOL = {"settings": ["5w1s", "5w5s", "20w1s"], "eval_tasks": 600, "random_cells": 5, "genotypes": 2,
            "json": os.path.join("benchmarks", "results", "compare_omniglot.json")}
#: the defaults without --protocol
QUICK = {"settings": ["5w1s", "5w5s"], "eval_tasks": 100, "random_cells": 2}


def main(args):
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    report = {"torch": torch.__version__, "torch_threads": args.threads, "device": args.device,
              "machine": platform.processor() or platform.machine(), "genotypes": args.genotype,
              "protocol": args.protocol, "match_params": args.match_params, "eval_tasks": args.eval_tasks,
              "settings": []}
    path = args.json or (PROTOCOL["json"] if args.protocol else os.path.join(args.out, "compare_omniglot.json"))
    for key in args.settings:
        setting = SETTINGS[key]
        cfg = RetrainConfig(ways=setting["ways"], shots=setting["shots"], queries=args.queries, tasks=args.tasks,
                            inner_steps=args.inner_steps, eval_inner_steps=args.eval_inner_steps,
                            iterations=args.iterations[key], channels=args.channels, layers=args.layers,
                            val_every=args.val_every or args.iterations[key], val_tasks=args.val_tasks,
                            checkpoint_every=args.val_every or args.iterations[key], device=args.device,
                            threads=args.threads)
        out = os.path.join(args.out, f"{setting['ways']}way{setting['shots']}shot")
        start = time.perf_counter()
        result = compare(args.genotype, random_cells=args.random_cells, config=cfg, seeds=args.seeds,
                         eval_tasks=args.eval_tasks, out=out, progress=args.progress, log=print,
                         match_params=args.match_params, param_target=args.param_target, workers=args.workers,
                         max_iterations=args.max_iterations.get(key), extend_by=args.extend_by)
        wall = time.perf_counter() - start
        print(f"\n== {setting['name']} (wall {wall:.0f} s) ==")
        print(format_compare_table(result))
        print()
        report["settings"].append({**setting, "wall_seconds": round(wall, 1), "plateau": plateau(result.rows),
                                   "result": result.to_dict()})
        plot_comparison(result.to_dict(), path=figure_path(path, key))
        print(f"picture: {figure_path(path, key)}")
        write_json(path, report)  # a long run keeps each finished setting
    report["wall_seconds"] = round(time.perf_counter() - t0, 1)
    print(f"total wall time {report['wall_seconds']:.0f} s, {args.threads} torch thread(s), {args.device}")
    write_json(path, report)
    print(f"json: {path}")
    return report


def plateau(rows):
    """The plateau rule applied to a setting's rows: its constants and the rows still learning."""
    return {"window": PLATEAU_WINDOW, "lag": PLATEAU_LAG, "threshold": PLATEAU_RISE,
            "still_learning": [r.label for r in rows if r.val_rise is None or r.val_rise > PLATEAU_RISE]}


def summary_table(report):
    """One Markdown table of every setting's accuracies: a row per architecture, a column per
    setting, then the random cells' median and how many searched cells are above it."""
    settings = report["settings"]
    labels = list(dict.fromkeys(row["label"] for s in settings for row in s["result"]["rows"]))
    by_label = [{row["label"]: row for row in s["result"]["rows"]} for s in settings]
    out = ["| architecture | " + " | ".join(s["name"] for s in settings) + " |",
           "|---" * (len(settings) + 1) + "|"]
    for label in labels:
        cells = [f"{100 * r[label]['accuracy']:.2f}% ± {100 * r[label]['ci95']:.2f}%" if label in r else "-"
                 for r in by_label]
        out.append(f"| {label} | " + " | ".join(cells) + " |")
    medians, above = [], []
    for s in settings:
        rows = s["result"]["rows"]
        median = random_median(rows)
        searched = [r["accuracy"] for r in rows if row_kind(r) == "searched"]
        medians.append("-" if median is None else f"*{100 * median:.2f}%*")
        above.append("-" if median is None else f"{sum(a > median for a in searched)} of {len(searched)}")
    out.append("| *random-cell median* | " + " | ".join(medians) + " |")
    out.append("| searched cells above the median | " + " | ".join(above) + " |")
    return "\n".join(out) + "\n"


def markdown_tables(report):
    """A summary of every setting (:func:`summary_table`), then each setting as a Markdown table
    with its budget line."""
    out = [summary_table(report)]
    for setting in report["settings"]:
        result = setting["result"]
        c = result["config"]
        target = (f"parameters matched to {result['param_target']:,} ±{100 * result['param_tolerance']:.0f}%"
                  if result.get("param_target") else f"{c['channels']} channels")
        budget = budget_text(c["iterations"], result.get("max_iterations"), result.get("extend_by"))
        out += [f"**{setting['name']}**, {budget} x {c['tasks']} tasks, {c['inner_steps']} inner "
                f"step(s) ({'first' if c['first_order'] else 'second'} order), {target}, {result['eval_tasks']} "
                f"test tasks ({result['eval_inner_steps']} steps), seeds {', '.join(map(str, result['seeds']))}:", "",
                f"| architecture | parameters | accuracy (95% CI) | paired vs {result['reference']} | val rise | "
                f"iterations |", "|---|---|---|---|---|---|"]
        for i, row in enumerate(result["rows"]):
            rise = row["val_rise"] if "val_rise" in row else validation_rise(row["val_curves"])  # older reports
            diff = ("reference" if i == 0 else
                    f"{100 * row['difference']:+.2f}% ± {100 * row['difference_ci95']:.2f}%")
            out.append(f"| {row['label']} | {row['parameters']:,} | **{100 * row['accuracy']:.2f}% ± "
                       f"{100 * row['ci95']:.2f}%** | {diff} | {'-' if rise is None else f'{rise:+.3f}'} | "
                       f"{max(row.get('iterations') or [c['iterations']])} |")
        out.append("")
    return "\n".join(out)


def parse_iterations(text, settings=tuple(SETTINGS)):
    """``--iterations``: one budget for every setting (``1200``) or one per setting (``5w1s=1200,20w1s=1600``)."""
    try:
        if "=" not in text:
            return dict.fromkeys(settings, int(text))
        given = {k.strip(): int(v) for k, v in (part.split("=") for part in text.split(",") if part.strip())}
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r}: expected N or SETTING=N,... (settings {', '.join(SETTINGS)})") from None
    unknown = [k for k in given if k not in SETTINGS]
    if unknown:
        raise argparse.ArgumentTypeError(f"{','.join(unknown)}: not a setting; expected some of {', '.join(SETTINGS)}")
    return given


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--protocol", action="store_true",
                        help=f"issue 12's comparison: settings {','.join(PROTOCOL['settings'])}, "
                             f"{PROTOCOL['eval_tasks']} test tasks, >= {PROTOCOL['random_cells']} random cells, "
                             f"matched parameters, >= {PROTOCOL['genotypes']} --genotype, JSON {PROTOCOL['json']}")
    parser.add_argument("--genotype", action="append", default=[],
                        help="a searched cell: genotype JSON or fit run folder (repeatable; the first is the "
                             "reference of the paired differences)")
    parser.add_argument("--settings", type=lambda s: [v.strip() for v in s.split(",") if v.strip()], default=None,
                        help=f"comma-separated, among {', '.join(SETTINGS)} [default: {','.join(QUICK['settings'])}; "
                             f"--protocol: all]")
    parser.add_argument("--random-cells", type=int, default=None,
                        help=f"[default: {QUICK['random_cells']}; --protocol: {PROTOCOL['random_cells']}]")
    parser.add_argument("--iterations", type=parse_iterations, default=parse_iterations("100"),
                        help="meta-iterations of every run: N, or per setting 5w1s=N,5w5s=N,20w1s=N")
    parser.add_argument("--max-iterations", type=parse_iterations, default={},
                        help="train every run until validation has plateaued: --iterations first, then --extend-by "
                             "more at a time while its val rise is above 0.02, at most this many (N, or per setting "
                             "5w1s=N,...; a setting without one keeps its fixed --iterations)")
    parser.add_argument("--extend-by", type=int, default=EXTEND_BY, help="with --max-iterations: iterations added "
                                                                           "at a time")
    parser.add_argument("--table", metavar="JSON", help="print the report JSON's tables as Markdown and exit")
    parser.add_argument("--figures", action="store_true",
                        help="with --table: also draw each setting beside the JSON (JSON_<setting>.png)")
    parser.add_argument("--val-every", type=int, default=None,
                        help="validate (one point of the learning curve) every N iterations "
                             "[default: once, at the end]")
    parser.add_argument("--tasks", type=int, default=2, help="tasks per meta-batch")
    parser.add_argument("--inner-steps", type=int, default=1, help="second-order inner steps in training")
    parser.add_argument("--eval-inner-steps", type=int, default=3, help="inner steps at validation/test time")
    parser.add_argument("--queries", type=int, default=5)
    parser.add_argument("--channels", type=int, default=8,
                        help="Conv-4 filters / first cell's channels (with matching: of the largest row)")
    parser.add_argument("--layers", type=int, default=2, help="cells of a genotype network")
    parser.add_argument("--param-target", type=int, default=None,
                        help="trainable parameters every row is matched to (±10%%) [default: the largest row's "
                             "count at --channels]")
    parser.add_argument("--no-match-params", dest="match_params", action="store_false",
                        help="every row at --channels (unequal parameter counts)")
    parser.add_argument("--val-tasks", type=int, default=20)
    parser.add_argument("--eval-tasks", type=int, default=None,
                        help=f"[default: {QUICK['eval_tasks']}; --protocol: {PROTOCOL['eval_tasks']}]")
    parser.add_argument("--seeds", type=lambda s: [int(v) for v in s.split(",")], default=[0])
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    parser.add_argument("--workers", type=int, default=1,
                        help="runs trained and evaluated at once, one process each with --threads threads")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", default="runs/compare-omniglot", help="folder of the runs (reused when rerun)")
    parser.add_argument("--json", help=f"the report [default: OUT/compare_omniglot.json; --protocol: "
                                       f"{PROTOCOL['json']}]")
    parser.add_argument("--progress", action="store_true", help="progress bars")
    args = parser.parse_args(argv)
    if args.table:
        return args
    defaults = PROTOCOL if args.protocol else QUICK
    for name in ("settings", "random_cells", "eval_tasks"):
        if getattr(args, name) is None:
            setattr(args, name, defaults[name])
    unknown = [s for s in args.settings if s not in SETTINGS]
    if unknown or not args.settings:
        parser.error(f"--settings {','.join(args.settings)}: expected some of {', '.join(SETTINGS)}")
    missing = [k for k in args.settings if k not in args.iterations]
    if missing:
        parser.error(f"--iterations: no budget for {','.join(missing)}")
    short = [k for k, m in args.max_iterations.items() if k in args.iterations and m < args.iterations[k]]
    if short:
        parser.error(f"--max-iterations: below --iterations for {','.join(short)}")
    if args.extend_by < 1:
        parser.error(f"--extend-by {args.extend_by}: expected an integer >= 1")
    if args.param_target is not None and not args.match_params:
        parser.error("--param-target needs parameter matching: drop --no-match-params")
    if args.protocol:
        if len(args.genotype) < PROTOCOL["genotypes"]:
            parser.error(f"--protocol compares BASE cells of at least {PROTOCOL['genotypes']} independent searches: "
                         f"give --genotype {PROTOCOL['genotypes']} times or more")
        if args.random_cells < PROTOCOL["random_cells"]:
            parser.error(f"--protocol draws at least {PROTOCOL['random_cells']} random cells")
        if args.eval_tasks < PROTOCOL["eval_tasks"]:
            parser.error(f"--protocol scores at least {PROTOCOL['eval_tasks']} test tasks")
        if not args.match_params:
            parser.error("--protocol matches parameter counts: drop --no-match-params")
    return args


def figure_path(json_path, key):
    """Where a setting's figure goes: beside the report, ``<report>_<setting>.png``."""
    return f"{os.path.splitext(json_path)[0]}_{key}.png"


def write_figures(path):
    """``--figures``: each setting of the report at ``path`` drawn beside it; the files written."""
    keys = {(v["ways"], v["shots"]): k for k, v in SETTINGS.items()}
    with open(path, encoding="utf-8") as f:
        report = json.load(f)
    written = []
    for setting in report["settings"]:
        written.append(figure_path(path, keys[setting["ways"], setting["shots"]]))
        plot_comparison(setting["result"], path=written[-1])
    return written


def print_tables(path):
    """``--table``: the Markdown tables of the report at ``path`` (one line and a non-zero exit if it is not one)."""
    try:
        with open(path, encoding="utf-8") as f:
            print(markdown_tables(json.load(f)))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        sys.exit(f"--table {path}: expected a report this script wrote ({type(exc).__name__}: {exc})")


if __name__ == "__main__":
    ARGS = parse_args()
    if ARGS.table:
        print_tables(ARGS.table)
        if ARGS.figures:
            print("\n".join(f"picture: {p}" for p in write_figures(ARGS.table)))
    else:
        main(ARGS)
