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
import dataclasses
import json
import os
import platform
import sys
import time

import click
import torch

from bayesnas.analysis.compare import (
    PLATEAU_LAG,
    PLATEAU_RISE,
    PLATEAU_WINDOW,
    budget_text,
    compare,
    format_compare_table,
    validation_rise,
)
from bayesnas.cli.options import config_options
from bayesnas.config import CompareSettings, RetrainConfig, resolve_config
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
#: this script's budget where RetrainConfig's defaults are larger (a flag of the same name overrides it);
#: val_every and checkpoint_every default to each setting's iterations: one validation, at the end
BUDGET = {"queries": 5, "tasks": 2, "inner_steps": 1, "eval_inner_steps": 3, "channels": 8, "layers": 2,
          "val_tasks": 20, "threads": 1, "device": "cpu"}
#: RetrainConfig fields set per run or per setting, not by a flag of their own
PER_SETTING = ("arch", "seed", "ways", "shots", "iterations")
RETRAIN_FIELDS = {f.name for f in dataclasses.fields(RetrainConfig)} - set(PER_SETTING)
COMPARE_FIELDS = {f.name for f in dataclasses.fields(CompareSettings)} - {"max_iterations"}


def settings_of(args):
    """Each setting of the run as ``(key, RetrainConfig, CompareSettings)``: one config and one
    settings object resolved from the flags (over :data:`BUDGET` and the protocol's defaults),
    then each setting's task shape and budget put in."""
    defaults = PROTOCOL if args.protocol else QUICK
    given = {k: v for k, v in vars(args).items() if v is not None}  # None: the flag was not given
    config = resolve_config(RetrainConfig, overrides={**BUDGET, **{k: given[k] for k in RETRAIN_FIELDS & set(given)}})
    chosen = resolve_config(CompareSettings, overrides={
        "random_cells": defaults["random_cells"], "eval_tasks": defaults["eval_tasks"],
        **{k: given[k] for k in COMPARE_FIELDS & set(given)}})
    for key in args.settings:
        iterations = args.iterations[key]
        cfg = dataclasses.replace(config, ways=SETTINGS[key]["ways"], shots=SETTINGS[key]["shots"],
                                  iterations=iterations, val_every=args.val_every or iterations,
                                  checkpoint_every=args.checkpoint_every or args.val_every or iterations)
        yield key, cfg, dataclasses.replace(chosen, max_iterations=args.max_iterations.get(key))


def main(args):
    runs = list(settings_of(args))
    threads, device = runs[0][1].threads, runs[0][1].device
    torch.set_num_threads(threads)
    t0 = time.perf_counter()
    first = runs[0][2]
    report = {"torch": torch.__version__, "torch_threads": threads, "device": device,
              "machine": platform.processor() or platform.machine(), "genotypes": args.genotype,
              "protocol": args.protocol, "match_params": first.match_params, "eval_tasks": first.eval_tasks,
              "settings": []}
    path = args.json or (PROTOCOL["json"] if args.protocol else os.path.join(args.out, "compare_omniglot.json"))
    for key, cfg, chosen in runs:
        setting = SETTINGS[key]
        out = os.path.join(args.out, f"{setting['ways']}way{setting['shots']}shot")
        start = time.perf_counter()
        result = compare(args.genotype, config=cfg, settings=chosen, out=out, progress=args.progress, log=print)
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
    print(f"total wall time {report['wall_seconds']:.0f} s, {threads} torch thread(s), {device}")
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
        raise click.BadParameter(f"{text!r}: expected N or SETTING=N,... (settings {', '.join(SETTINGS)})") from None
    unknown = [k for k in given if k not in SETTINGS]
    if unknown:
        raise click.BadParameter(f"{','.join(unknown)}: not a setting; expected some of {', '.join(SETTINGS)}")
    return given


def _budgets(ctx, param, value):
    return {} if value is None else parse_iterations(value)


@click.command(help=__doc__.replace("\n\n    python", "\n\n\b\n    python", 1),  # \b: the usage lines unwrapped
               context_settings={"max_content_width": 120})
@click.option("--protocol", is_flag=True,
              help=f"issue 12's comparison: settings {','.join(PROTOCOL['settings'])}, {PROTOCOL['eval_tasks']} test "
                   f"tasks, >= {PROTOCOL['random_cells']} random cells, matched parameters, >= "
                   f"{PROTOCOL['genotypes']} --genotype, JSON {PROTOCOL['json']}")
@click.option("--genotype", multiple=True,
              help="a searched cell: genotype JSON or fit run folder (repeatable; the first is the reference of the "
                   "paired differences)")
@click.option("--settings", default=None,
              help=f"comma-separated, among {', '.join(SETTINGS)} [default: {','.join(QUICK['settings'])}; "
                   f"--protocol: all]")
@click.option("--iterations", default="100", callback=_budgets,
              help="meta-iterations of every run: N, or per setting 5w1s=N,5w5s=N,20w1s=N [default: 100]")
@click.option("--max-iterations", default=None, callback=_budgets,
              help="train every run until validation has plateaued: --iterations first, then --extend-by more at a "
                   "time while its val rise is above 0.02, at most this many (N, or per setting 5w1s=N,...; a "
                   "setting without one keeps its fixed --iterations)")
@click.option("--table", metavar="JSON", default=None, help="print the report JSON's tables as Markdown and exit")
@click.option("--figures", is_flag=True,
              help="with --table: also draw each setting beside the JSON (JSON_<setting>.png)")
@click.option("--out", default="runs/compare-omniglot", help="folder of the runs (reused when rerun)")
@click.option("--json", default=None,
              help=f"the report [default: OUT/compare_omniglot.json; --protocol: {PROTOCOL['json']}]")
@click.option("--progress", is_flag=True, help="progress bars")
@config_options(CompareSettings, skip=("max_iterations",),
                defaults={"random_cells": QUICK["random_cells"], "eval_tasks": QUICK["eval_tasks"]})
@config_options(RetrainConfig, skip=PER_SETTING,
                defaults={**BUDGET, "val_every": "each setting's iterations", "checkpoint_every": "val_every"})
def options(**params):
    """The flags: this script's own, then one per CompareSettings and RetrainConfig field."""
    return params


def parse_args(argv=None):
    """The flags as a namespace, checked (a usage error prints and exits 2, as a parser's does)."""
    argv = sys.argv[1:] if argv is None else [str(a) for a in argv]
    try:
        with options.make_context(os.path.basename(__file__), argv) as ctx:
            args = argparse.Namespace(**ctx.params)
        args.genotype = list(args.genotype)
        if not args.table:
            _check(args)
        return args
    except click.exceptions.Exit as done:  # --help
        sys.exit(done.exit_code)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)


def _check(args):
    """What the flags must agree on; a click.UsageError naming the rule."""
    defaults = PROTOCOL if args.protocol else QUICK
    args.settings = ([v.strip() for v in args.settings.split(",") if v.strip()] if args.settings is not None
                     else list(defaults["settings"]))
    unknown = [s for s in args.settings if s not in SETTINGS]
    if unknown or not args.settings:
        raise click.UsageError(f"--settings {','.join(args.settings)}: expected some of {', '.join(SETTINGS)}")
    missing = [k for k in args.settings if k not in args.iterations]
    if missing:
        raise click.UsageError(f"--iterations: no budget for {','.join(missing)}")
    short = [k for k, m in args.max_iterations.items() if k in args.iterations and m < args.iterations[k]]
    if short:
        raise click.UsageError(f"--max-iterations: below --iterations for {','.join(short)}")
    if args.param_target is not None and args.match_params is False:
        raise click.UsageError("--param-target needs parameter matching: drop --no-match-params")
    if args.protocol:
        chosen = next(settings_of(args))[2]
        if len(args.genotype) < PROTOCOL["genotypes"]:
            raise click.UsageError(f"--protocol compares BASE cells of at least {PROTOCOL['genotypes']} independent "
                                   f"searches: give --genotype {PROTOCOL['genotypes']} times or more")
        if chosen.random_cells < PROTOCOL["random_cells"]:
            raise click.UsageError(f"--protocol draws at least {PROTOCOL['random_cells']} random cells")
        if chosen.eval_tasks < PROTOCOL["eval_tasks"]:
            raise click.UsageError(f"--protocol scores at least {PROTOCOL['eval_tasks']} test tasks")
        if not chosen.match_params:
            raise click.UsageError("--protocol matches parameter counts: drop --no-match-params")


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
