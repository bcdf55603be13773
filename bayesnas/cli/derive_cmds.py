"""``bayesnas derive-cell``: derive a fit run's cell, write it as JSON and draw it."""
import click

from .common import user_errors


@click.command("derive-cell")
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.option("--task-seed", type=click.IntRange(min=0), default=None,
              help="Adapt the edge posterior to the support set of the task drawn with this seed "
                   "[default: the meta-level alpha].")
@click.option("--task-split", type=click.Choice(["val", "test"]), default="val",
              help="Split of the --task-seed task (test classes must stay unseen until evaluation).")
@click.option("--out", type=click.Path(dir_okay=False), default=None,
              help="Genotype JSON to write [default: RUN_DIR/genotype.json, or RUN_DIR/genotype-task<N>.json].")
@click.option("--no-plot", is_flag=True, help="Do not draw the cells (default: a PNG beside the JSON).")
@click.option("--checkpoint", type=click.Choice(["last", "best"]), default="last", help="Fit checkpoint to read.")
@click.option("--device", default=None, help="auto, cpu, cuda or cuda:N, where a --task-seed posterior is adapted "
                                             "[default: the device the run trains on].")
@user_errors
def derive_cell_command(run_dir, task_seed, task_split, out, no_plot, checkpoint, device):
    """Derive the cell of a fit run: the 2 strongest edges per node, each with its best op."""
    from ..analysis.derive import derive_cell, format_edges_table

    cell = derive_cell(run_dir, task_seed=task_seed, out=out, plot=not no_plot, which=checkpoint,
                       task_split=task_split, device=device)
    click.echo(format_edges_table(cell.table))
    click.echo(f"genotype: {cell.genotype_path}")
    if cell.plot_path:
        click.echo(f"picture: {cell.plot_path}")
