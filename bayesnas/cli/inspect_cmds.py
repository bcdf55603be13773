"""``bayesnas inspect``: a run's summary (or its whole card); for a fit run its edge posterior and derived cells,
and its plots."""
import math
import os

import click

from .common import user_errors
from .options import SEED


@click.command("inspect")
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="Folder for the plots [default: RUN_DIR/inspect].")
@click.option("--checkpoint", "which", type=click.Choice(["last", "best"]), default="last",
              help="Fit checkpoint to read.")
@click.option("--top", type=click.IntRange(1, 10), default=3, help="Ops listed per edge (10 = the whole table).")
@click.option("--sort", "sort_by", type=click.Choice(["edge", "entropy"]), default="edge",
              help="Edge order: by index, or surest (lowest entropy) first.")
@click.option("--history-rows", type=click.IntRange(min=0), default=20,
              help="Rows of the search-diagnostics table, evenly spaced over training (0 = every logged step).")
@click.option("--format", "fmt", type=click.Choice(["png", "pdf", "svg"]), default="png", help="Plot file format.")
@click.option("--no-plots", is_flag=True, help="Print only; write no files (not even the refreshed run card).")
@click.option("--card", "whole_card", is_flag=True, help="Print the whole run card instead of its summary.")
@click.option("--calibration", "calibration_tasks", type=click.IntRange(min=0), default=0,
              help="Also adapt to this many held-out tasks and report the ECE of one posterior sample "
                   "vs --samples averaged (0 = skip).")
@click.option("--samples", type=click.IntRange(min=1), default=8,
              help="Posterior samples averaged (with --calibration).")
@click.option("--seed", type=SEED, default=0, help="Seed of the calibration tasks and samples.")
@click.option("--device", default=None, help="auto, cpu, cuda or cuda:N, where --calibration adapts its tasks "
                                             "[default: the device the run trains on].")
@user_errors
def inspect_command(run_dir, out, which, top, sort_by, history_rows, fmt, no_plots, whole_card, calibration_tasks,
                    samples, seed, device):
    """Summarise a fit or retrain run (--card: print its whole run card RUN/README.md, refreshed either way);
    for a fit run also its edge posterior (top ops and entropy per edge, derived cells, how decided it got
    over training) and plots."""
    from ..analysis import load_run
    from ..analysis.report import (
        format_calibration,
        format_derived_cells,
        format_diagnostics_table,
        format_posterior_table,
        format_run_summary,
    )
    from ..training.card import build_run_card, write_run_card
    from ..training.loop import run_device

    if history_rows == 1:
        raise click.BadParameter("expected 0 (every logged step) or at least 2 (the first and the last)",
                                 param_hint="--history-rows")
    where = run_device(run_dir, device)  # a device this machine lacks is an error before anything is written
    card = build_run_card(run_dir) if no_plots else write_run_card(run_dir)
    head = card.markdown if whole_card else format_run_summary(card)
    if card.kind != "fit":
        click.echo(head)
        return
    run = load_run(run_dir, device=str(where))
    post = run.edge_posterior(which)
    history = run.posterior_history()  # read (and checked) before anything is printed
    cfg = run.config
    click.echo(head)
    click.echo(f"\nrun {run.path}: {which} checkpoint at iteration {run.checkpoint_iteration(which)}/{cfg.iterations}, "
               f"{cfg.variant}, tau {post.tau:.3g}")
    click.echo(format_posterior_table(post, top=top, sort_by=sort_by))
    click.echo("\n" + format_derived_cells(post.derive()))
    click.echo(f"\nsearch diagnostics over training (meta-level posterior, all 28 edges; uniform: entropy "
               f"{math.log(10):.3f}, top-op prob 0.100):")
    click.echo(format_diagnostics_table(history, max_rows=history_rows or None))
    if calibration_tasks:
        cal = run.calibration(tasks=calibration_tasks, samples=samples, seed=seed, which=which, progress=True)
        click.echo("\n" + format_calibration(cal))
    if not no_plots:
        folder = out if out is not None else run.directory.subfolder("inspect")
        paths = [os.path.join(folder, f"{name}.{fmt}")
                 for name in ("edge_posterior", "posterior_history", "search_diagnostics")]
        post.plot(path=paths[0])
        history.plot(path=paths[1])
        history.plot_diagnostics(path=paths[2])
        click.echo("\nplots:")
        for path in paths:
            click.echo(f"  {path}")
