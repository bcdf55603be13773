"""``bayesnas derive-cell``: derive a fit run's cell, write it as JSON and draw it."""
import click

from .common import ProgressBar, user_errors
from .options import SEED


@click.command("derive-cell")
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.option("--task-seed", type=SEED, default=None,
              help="Adapt the edge posterior to the support set of the task drawn with this seed "
                   "[default: the meta-level alpha].")
@click.option("--task-split", type=click.Choice(["val", "test"]), default="val",
              help="Split of the --task-seed task (test classes must stay unseen until evaluation).")
@click.option("--out", type=click.Path(dir_okay=False), default=None,
              help="Genotype JSON to write [default: RUN_DIR/genotype.json, or RUN_DIR/genotype-task<N>.json].")
@click.option("--no-plot", is_flag=True, help="Do not draw the cells (default: a PNG beside the JSON).")
@click.option("--checkpoint", type=click.Choice(["last", "best"]), default="last", help="Fit checkpoint to read.")
@click.option("--by", type=click.Choice(["alpha", "evidence", "score"]), default="alpha",
              help="alpha: the paper's rule on the edge probabilities; evidence: every op and edge chosen by the "
                   "held-out log-likelihood of the adapted meta-network on validation tasks (about 280 scorings of "
                   "--tasks tasks; writes RUN_DIR/genotype-evidence.json and evidence.json); score: weight-sharing "
                   "random search, alpha's cell and --candidates random cells scored by the adapted meta-network's "
                   "query accuracy on --tasks validation tasks, the best kept (RUN_DIR/genotype-score.json and "
                   "score.json).")
@click.option("--tasks", type=click.IntRange(min=1), default=None,
              help="With --by evidence or score: validation tasks [default: 20 for evidence, 50 for score].")
@click.option("--candidates", type=click.IntRange(min=1, max=10000), default=50, show_default=True,
              help="With --by score: random cells scored beside alpha's cell.")
@click.option("--finetune", type=click.IntRange(min=0), default=0,
              help="With --by evidence: SVI steps on the weights after each op decision.")
@click.option("--prior", type=click.Choice(["alpha", "uniform"]), default="alpha",
              help="With --by evidence: the prior of the reported op posteriors.")
@click.option("--seed", type=click.IntRange(min=0, max=2**31 - 1), default=0,
              help="With --by evidence: seed of the tasks, the edge order and the sampling noise.")
@click.option("--device", default=None, help="auto, cpu, cuda or cuda:N, where a --task-seed posterior or the "
                                             "evidence is computed [default: the device the run trains on].")
@user_errors
def derive_cell_command(run_dir, task_seed, task_split, out, no_plot, checkpoint, by, tasks, candidates, finetune,
                        prior, seed, device):
    """Derive the cell of a fit run: the 2 strongest edges per node, each with its best op."""
    from ..analysis.derive import by_score, derive_cell, format_edges_table

    if tasks is None:
        tasks = 50 if by == "score" else 20
    with ProgressBar(f"derive by {by}", "scoring") as progress:
        cell = derive_cell(run_dir, task_seed=task_seed, out=out, plot=not no_plot, which=checkpoint,
                           task_split=task_split, by=by, evidence_tasks=tasks, finetune=finetune, prior=prior,
                           seed=seed, device=device, candidates=candidates, progress=progress)
    if cell.scores is None:  # a scored cell has no edge probabilities to show
        click.echo(format_edges_table(cell.table))
    if cell.evidence is not None:
        sure = sum(d.difference - d.ci95 > 0 for d in cell.evidence.decisions)
        click.echo(f"by held-out evidence on {cell.evidence.tasks} validation tasks ({cell.evidence.seconds:.0f} s): "
                   f"{sure} of {len(cell.evidence.decisions)} op choices beat their runner-up with a paired 95% CI "
                   f"above 0 (evidence.json has every decision)")
    if cell.scores is not None:
        ranked = by_score(cell.scores.scores)
        click.echo(f"by weight-sharing score on {cell.scores.tasks} validation tasks ({cell.scores.seconds:.0f} s), "
                   f"best of {len(ranked)} cells:")
        for s in ranked[:5]:
            click.echo(f"  {s.label:<14} accuracy {100 * s.mean_accuracy:6.2f}% ± {100 * s.accuracy_ci95:.2f}%   "
                       f"log-lik {s.mean_loglik:8.4f}")
    click.echo(f"genotype: {cell.genotype_path}")
    if cell.plot_path:
        click.echo(f"picture: {cell.plot_path}")
