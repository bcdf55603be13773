"""``bayesnas score-cells``: score discrete cells with a fit run's meta-network on the same held-out tasks."""
import click

from .common import ProgressBar, user_errors
from .options import SEED


@click.command("score-cells")
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.argument("cells", nargs=-1)
@click.option("--random", "random_cells", type=click.IntRange(min=0), default=0,
              help="Also score this many cells drawn uniformly from the space (labelled and drawn as compare's "
                   "random-1, random-2, ... with the same --random-seed).")
@click.option("--random-seed", type=SEED, default=0, help="Seed of the random cells.")
@click.option("--tasks", type=click.IntRange(min=1), default=100, help="Held-out tasks, the same for every cell.")
@click.option("--split", type=click.Choice(["val", "test"]), default="val",
              help="Split of the tasks (scoring cells is model selection: validation classes).")
@click.option("--seed", type=click.IntRange(min=0, max=2**31 - 1), default=0,
              help="Seed of the tasks and of the sampling noise.")
@click.option("--samples", type=click.IntRange(min=1), default=4, help="Posterior samples averaged per prediction.")
@click.option("--batch", type=click.IntRange(min=1), default=10, help="Tasks adapted at once.")
@click.option("--checkpoint", "which", type=click.Choice(["last", "best"]), default="last",
              help="Fit checkpoint to read.")
@click.option("--finetune", type=click.IntRange(min=0), default=0,
              help="Before each cell is scored, this many first-order SVI steps on the weights with that cell "
                   "fixed, on training tasks (every cell from the run's weights, on the same tasks); 0: none.")
@click.option("--device", default="cpu", help="cpu, cuda or cuda:N.")
@click.option("--json", "json_out", type=click.Path(dir_okay=False), default=None,
              help="Also write every per-task score as JSON here.")
@user_errors
def score_cells_command(run_dir, cells, random_cells, random_seed, tasks, split, seed, samples, batch, which, finetune,
                        device, json_out):
    """Score CELLS (genotype JSON files, run folders holding genotype.json, or darts_v2) with the meta-network
    of the fit run RUN_DIR: each cell fixes the supernet's architecture, the guide adapts the weights to each
    held-out task's support set, and the cell is scored by the query log-likelihood and accuracy. Higher is
    better; differences between cells are paired per task. Weight-sharing random search: --random N, then
    retrain the best."""
    from ..analysis.score import format_scores, score_cells
    from ..fileio import write_json

    with ProgressBar("score", "cell") as progress:
        result = score_cells(run_dir, list(cells), tasks=tasks, split=split, seed=seed, samples=samples, batch=batch,
                             which=which, device=device, random_cells=random_cells, random_seed=random_seed,
                             progress=progress, finetune=finetune)
    click.echo(format_scores(result))
    best = result.best()
    click.echo(f"best: {best.label} (query log-likelihood {best.mean_loglik:.4f})")
    if json_out:
        write_json(json_out, result.to_dict())
        click.echo(f"json: {json_out}")
