"""The ``bayesnas`` command: a click group; each subcommand lives in its own module."""
import click

from .. import __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.version_option(__version__, prog_name="bayesnas")
def main():
    """BASE: Bayesian meta-architecture search for few-shot learning."""


def _register():
    from . import data_cmds, derive_cmds, fit_cmds, inspect_cmds, retrain_cmds, score_cmds

    main.add_command(data_cmds.data)
    main.add_command(fit_cmds.fit_command)
    main.add_command(inspect_cmds.inspect_command)
    main.add_command(derive_cmds.derive_cell_command)
    main.add_command(score_cmds.score_cells_command)
    main.add_command(retrain_cmds.retrain_command)
    main.add_command(retrain_cmds.evaluate_command)
    main.add_command(retrain_cmds.compare_command)


_register()

if __name__ == "__main__":
    main()
