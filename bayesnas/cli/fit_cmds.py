"""``bayesnas fit``: parse flags, call :func:`bayesnas.inference.fit`, print the result."""
import click

from ..config import FitConfig, resolve_config
from .common import cli_command, user_errors

_D = FitConfig()


@click.command("fit")
@click.option("--out", type=click.Path(file_okay=False), default=None, help="Run folder to create [default: runs/fit-<time>].")
@click.option("--resume", type=click.Path(file_okay=False), default=None, help="Continue the run in this folder from its last checkpoint.")
@click.option("--config", "config_file", type=click.Path(dir_okay=False), default=None, help="JSON file of settings (flags override it).")
@click.option("--data", type=click.Path(dir_okay=False), default=None, help="HDF5 data file [default: embedded Omniglot].")
@click.option("--iterations", type=click.IntRange(min=1), default=None, help=f"Meta-iterations [default: {_D.iterations}].")
@click.option("--tasks", type=click.IntRange(min=1), default=None, help=f"Tasks per meta-iteration T [default: {_D.tasks}].")
@click.option("--inner-steps", type=click.IntRange(min=0), default=None, help=f"Unrolled guide steps N [default: {_D.inner_steps}].")
@click.option("--ways", type=click.IntRange(min=2), default=None, help=f"Classes per task [default: {_D.ways}].")
@click.option("--shots", type=click.IntRange(min=1), default=None, help=f"Support images per class [default: {_D.shots}].")
@click.option("--queries", type=click.IntRange(min=1), default=None, help=f"Query images per class [default: {_D.queries}].")
@click.option("--rotations/--no-rotations", default=None,
              help="Rotated images as new training classes [default: on for an Omniglot file only].")
@click.option("--select-on", type=click.Choice(["val", "test"]), default=None,
              help="Split that validates and picks checkpoint_best.pt; 'test' only for a file without "
                   "validation classes (the run is marked) [default: val].")
@click.option("--image-size", type=click.IntRange(min=1), default=None,
              help="Search on images resized to this size (a cheaper proxy) [default: the data's size].")
@click.option("--channels", type=click.IntRange(min=1), default=None, help=f"Supernet channels C [default: {_D.channels}].")
@click.option("--cells", type=click.IntRange(min=1), default=None, help=f"Supernet cells [default: {_D.cells}].")
@click.option("--variant", type=click.Choice(["gumbel", "softmax"]), default=None, help=f"Edge variables [default: {_D.variant}].")
@click.option("--first-order/--second-order", default=None,
              help=f"First-order meta-gradient (inner gradients detached), or the paper's full second-order "
                   f"one [default: {'first' if _D.first_order else 'second'}-order].")
@click.option("--low-memory", is_flag=True, default=None,
              help="Memory-bounded step: one task at a time, inner steps recomputed in backward (same results, slower).")
@click.option("--meta-lr", type=click.FloatRange(min=0, min_open=True), default=None, help=f"Adam step size of mu, sigma [default: {_D.meta_lr}].")
@click.option("--arch-lr", type=click.FloatRange(min=0, min_open=True), default=None, help=f"Adam step size of alpha [default: {_D.arch_lr}].")
@click.option("--arch-warmup", type=click.IntRange(min=0), default=None,
              help=f"Iterations before alpha is first stepped [default: {_D.arch_warmup}].")
@click.option("--arch-schedule", type=click.Choice(["constant", "cosine"]), default=None,
              help=f"alpha's step size after the warm-up: constant, or cosine-decayed to 0 [default: {_D.arch_schedule}].")
@click.option("--set-encoder", is_flag=True, default=None, help="Start edge logits at alpha + h_V(support set).")
@click.option("--learn-inner-lr", is_flag=True, default=None, help="Meta-learn the inner step sizes.")
@click.option("--kl-weight", type=click.FloatRange(min=0), default=None, help=f"Weight of the KL terms [default: {_D.kl_weight}, the full ELBO].")
@click.option("--kl-anneal", type=click.IntRange(min=0), default=None, help="Iterations of linear KL warm-up [default: 0].")
@click.option("--sigma-init", type=click.FloatRange(min=0, min_open=True), default=None, help=f"Initial prior weight scale [default: {_D.sigma_init}].")
@click.option("--tau-start", type=click.FloatRange(min=0, min_open=True), default=None, help=f"[default: {_D.tau_start}]")
@click.option("--tau-end", type=click.FloatRange(min=0, min_open=True), default=None, help=f"[default: {_D.tau_end}]")
@click.option("--val-every", type=click.IntRange(min=1), default=None, help=f"[default: {_D.val_every}]")
@click.option("--checkpoint-every", type=click.IntRange(min=1), default=None, help=f"Iterations between checkpoints [default: {_D.checkpoint_every}].")
@click.option("--val-tasks", type=click.IntRange(min=1), default=None, help=f"Validation tasks [default: {_D.val_tasks}].")
@click.option("--device", default=None, help="auto, cpu, cuda or cuda:N [default: auto].")
@click.option("--seed", type=int, default=None, help=f"[default: {_D.seed}]")
@click.option("--threads", type=click.IntRange(min=0), default=None, help=f"torch CPU threads, 0 = torch's choice [default: {_D.threads}].")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.option("--tensorboard", is_flag=True,
              help="Also write TensorBoard event files to RUN/tensorboard/ (pip install 'bayesnas[tensorboard]').")
@user_errors
def fit_command(out, resume, config_file, quiet, tensorboard, **flags):
    """Meta-train BASE (weights and cell architecture) by SVI and write a run folder."""
    from ..inference import fit

    if resume is not None:
        overrides = {k: v for k, v in flags.items() if v is not None}
        extra = sorted(set(overrides) - {"iterations"})
        if extra or config_file:
            raise click.UsageError("--resume continues a run with its own config; only --iterations may be given")
        config = resolve_config(FitConfig, overrides=dict(_D.to_dict(), **overrides)) if overrides else None
        result = fit(config, resume=resume, progress=not quiet, tensorboard=tensorboard, command=cli_command())
    else:
        config = resolve_config(FitConfig, config_file=config_file, overrides=flags)
        result = fit(config, out=out, progress=not quiet, tensorboard=tensorboard, command=cli_command())
    if result.run_dir is None:  # a rank other than 0 of a torchrun job: rank 0 reports
        return
    last = result.rows[-1] if result.rows else {}
    click.echo(f"run folder: {result.run_dir}")
    if "val_acc" in last:
        click.echo(f"validation accuracy {last['val_acc']:.3f}, query ELBO per point {last['val_elbo']:.3f} "
                   f"after {last['iteration']} iterations ({result.seconds:.0f} s)")
