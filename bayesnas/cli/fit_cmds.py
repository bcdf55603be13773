"""``bayesnas fit``: parse flags, call :func:`bayesnas.training.fit`, print the result."""
import click

from ..config import FitConfig, resolve_config, resume_overrides
from .common import cli_command, user_errors
from .options import config_options, run_options


@click.command("fit")
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="Run folder to create [default: runs/fit-<time>].")
@click.option("--resume", type=click.Path(file_okay=False), default=None,
              help="Continue the run in this folder from its last checkpoint.")
@run_options("FitConfig")
@config_options(FitConfig)
@user_errors
def fit_command(out, resume, config_file, quiet, tensorboard, **flags):
    """Meta-train BASE (weights and cell architecture) by SVI and write a run folder.

    Each validation logs val_acc, the query accuracy on held-out tasks, and val_elbo, the
    query ELBO per point with both KL terms at full weight. The training loss is the
    negative ELBO with the KL terms tempered by --kl-weight, so val_elbo sits far below
    -loss (e.g. -330 beside loss 1.9): follow val_elbo over iterations, not against loss.
    """
    from ..training import fit

    if resume is not None:
        result = fit(resume_overrides(flags, config_file), resume=resume, progress=not quiet, tensorboard=tensorboard,
                     command=cli_command())
    else:
        if flags["z_per_example"] and flags["supernet"] == "reference":
            raise click.UsageError("--z-per-example needs the fused supernet; drop --supernet reference")
        config = resolve_config(FitConfig, config_file=config_file, overrides=flags)
        result = fit(config, out=out, progress=not quiet, tensorboard=tensorboard, command=cli_command())
    if result.run_dir is None:  # a rank other than 0 of a torchrun job: rank 0 reports
        return
    last = result.rows[-1] if result.rows else {}
    click.echo(f"run folder: {result.run_dir}")
    if "val_acc" in last:
        click.echo(f"validation accuracy {last['val_acc']:.3f}, query ELBO per point {last['val_elbo']:.3f} "
                   f"after {last['iteration']} iterations ({result.seconds:.0f} s)")
