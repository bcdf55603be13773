"""``bayesnas retrain``, ``evaluate``, ``compare``: parse, call the library, print."""
import dataclasses

import click

from ..config import PRECISIONS, CompareSettings, RetrainConfig, resolve_config, resume_overrides
from .common import cli_command, user_errors
from .options import SEED, config_options, run_options


@click.command("retrain")
@click.argument("arch", required=False, metavar="GENOTYPE|conv4|darts_v2")
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="Run folder to create [default: runs/retrain-<time>].")
@click.option("--resume", type=click.Path(file_okay=False), default=None,
              help="Continue the retrain run in this folder from its last checkpoint.")
@run_options("RetrainConfig")
@config_options(RetrainConfig, skip=("arch",))
@user_errors
def retrain_command(arch, out, resume, config_file, quiet, tensorboard, **flags):
    """Meta-train a network from GENOTYPE (a genotype JSON file or a fit run folder), conv4 or darts_v2 with MAML."""
    from ..models import arch_label
    from ..training import retrain

    if resume is not None:
        result = retrain(arch, resume_overrides(flags, config_file), resume=resume, progress=not quiet,
                         tensorboard=tensorboard, command=cli_command())
    else:
        if arch is None:
            raise click.UsageError("give GENOTYPE (a genotype JSON file or fit run folder), conv4 or darts_v2")
        config = resolve_config(RetrainConfig, config_file=config_file, overrides=dict(flags, arch=arch))
        result = retrain(None, config, out=out, progress=not quiet, tensorboard=tensorboard, command=cli_command())
    if result.run_dir is None:  # a rank other than 0 of a torchrun job: rank 0 reports
        return
    last = result.rows[-1] if result.rows else {}
    best = max((r["val_acc"] for r in result.rows if r.get("val_acc") is not None), default=None)
    click.echo(f"run folder: {result.run_dir}")
    click.echo(f"{arch_label(result.config.arch)}: {result.parameters:,} parameters, "
               f"{last.get('iteration', 0)} iterations, {result.train_seconds:.0f} s training")
    if best is not None:
        click.echo(f"validation accuracy: last {last.get('val_acc', float('nan')):.3f}, best {best:.3f}")


@click.command("evaluate")
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.option("--tasks", type=click.IntRange(min=1), default=600, help="Test tasks.")
@click.option("--inner-steps", type=click.IntRange(min=0), default=None,
              help="Test-time inner steps [default: the run's].")
@click.option("--split", type=click.Choice(["test", "val", "train"]), default="test", help="Classes to test on.")
@click.option("--seed", type=SEED, default=0, help="Seed of the test tasks.")
@click.option("--checkpoint", type=click.Choice(["best", "last"]), default="best", help="Checkpoint to evaluate.")
@click.option("--json", "json_out", type=click.Path(dir_okay=False), default=None,
              help="Also write the result as JSON.")
@click.option("--device", default=None, help="auto, cpu, cuda or cuda:N [default: the device the run trains on; a "
                                             "run made on the CPU stays there].")
@click.option("--precision", type=click.Choice(PRECISIONS), default=None,
              help="The network's forward, fp32 or bf16 (autocast) [default: the run's].")
@click.option("--threads", type=click.IntRange(min=0), default=0, help="torch CPU threads [default: torch's].")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@user_errors
def evaluate_command(run_dir, tasks, inner_steps, split, seed, checkpoint, json_out, device, precision, threads,
                     quiet):
    """Accuracy of a retrained network on held-out classes: mean and 95% CI over seeded tasks."""
    from ..analysis.evaluate import evaluate, format_evaluation

    result = evaluate(run_dir, tasks=tasks, inner_steps=inner_steps, split=split, seed=seed, json_out=json_out,
                      which=checkpoint, device=device, threads=threads, progress=not quiet, precision=precision)
    if result is None:  # a rank other than 0 of a torchrun job: rank 0 reports
        return
    click.echo(format_evaluation(result))
    if json_out:
        click.echo(f"json: {json_out}")


@click.command("compare")
@click.argument("genotypes", nargs=-1, metavar="[GENOTYPE]...")
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="Folder of the runs and compare.json [default: runs/compare-<time>]; reused runs continue.")
@click.option("--json", "json_out", type=click.Path(dir_okay=False), default=None, help="Also write the table as JSON.")
@click.option("--pool", type=click.Path(dir_okay=False), default=None,
              help="A pool file of retrained random cells made under this same protocol: its cells join the table "
                   "without retraining, and each other row's percentile in the pool is reported.")
@click.option("--save-pool", type=click.Path(dir_okay=False), default=None,
              help="Write this comparison's random cells (and --pool's) as a pool file here.")
@run_options("RetrainConfig")
@config_options(CompareSettings)
@config_options(RetrainConfig, skip=("arch", "seed"))
@user_errors
def compare_command(genotypes, out, json_out, pool, save_pool, config_file, quiet, tensorboard, **flags):
    """Retrain and evaluate GENOTYPEs, DARTS_V2, Conv-4 and random cells under one budget (Table 1).

    Each architecture's width is chosen so its trainable parameter count is within ±10% of one
    target; the first row is the reference of the paired differences.
    """
    from ..analysis.compare import compare, format_compare_table

    if flags["param_target"] is not None and flags["match_params"] is False:
        raise click.UsageError("--param-target needs parameter matching; drop --no-match-params")
    names = {f.name for f in dataclasses.fields(CompareSettings)}
    settings = resolve_config(CompareSettings, overrides={k: v for k, v in flags.items() if k in names})
    config = resolve_config(RetrainConfig, config_file=config_file,
                            overrides={k: v for k, v in flags.items() if k not in names})
    result = compare(list(genotypes), config=config, settings=settings, out=out, json_out=json_out,
                     progress=not quiet, log=click.echo, tensorboard=tensorboard, command=cli_command(), pool=pool,
                     save_pool=save_pool)
    click.echo(format_compare_table(result))
    click.echo(f"json: {json_out or result.out + '/compare.json'}")
    click.echo(f"picture: {result.out}/compare.png")
    if save_pool:
        click.echo(f"pool: {save_pool}")
