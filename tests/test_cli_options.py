"""The CLI is generated from the config dataclasses: every field is a flag, and light commands start without torch."""
import dataclasses
import subprocess
import sys

import pytest
from click.testing import CliRunner

from bayesnas.cli.main import main
from bayesnas.config import CompareSettings, FitConfig, RetrainConfig


def flags_of(command):
    return {opt for param in main.commands[command].params for opt in param.opts + param.secondary_opts}


@pytest.mark.parametrize("command, cls, skip", [("fit", FitConfig, ()), ("retrain", RetrainConfig, ("arch",)),
                                                ("compare", RetrainConfig, ("arch", "seed")),
                                                ("compare", CompareSettings, ())])
def test_every_config_field_is_a_flag_of_its_command(command, cls, skip):
    flags = flags_of(command)
    for field in dataclasses.fields(cls):
        if field.name in skip:
            continue
        flag = "--" + field.name.replace("_", "-")
        assert flag in flags, f"{cls.__name__}.{field.name} has no flag {flag} in 'bayesnas {command}'"
        assert field.metadata.get("help"), f"{cls.__name__}.{field.name} has no help text"
        if field.type is bool:  # an on and an off switch
            param = next(p for p in main.commands[command].params if p.name == field.name)
            assert param.opts and param.secondary_opts, f"{flag} has no off switch"


def test_historical_flag_names_still_work():
    fit_flags, retrain_flags = flags_of("fit"), flags_of("retrain")
    for flag in ("--first-order", "--second-order", "--low-memory", "--set-encoder", "--learn-inner-lr", "--rotations",
                 "--no-rotations", "--config", "--out", "--resume", "--quiet", "--tensorboard", "--iterations"):
        assert flag in fit_flags
    for flag in ("--first-order", "--low-memory", "--rotations", "--no-rotations", "--eval-inner-steps", "--seed"):
        assert flag in retrain_flags


def test_choices_and_ranges_come_from_the_fields():
    runner = CliRunner()
    result = runner.invoke(main, ["fit", "--variant", "fancy"])
    assert result.exit_code == 2 and "gumbel" in result.output and "softmax" in result.output
    result = runner.invoke(main, ["fit", "--ways", "1"])
    assert result.exit_code == 2 and "--ways" in result.output
    result = runner.invoke(main, ["retrain", "conv4", "--inner-lr", "0"])
    assert result.exit_code == 2 and "--inner-lr" in result.output
    help_text = runner.invoke(main, ["fit", "--help"]).output
    assert "--inner-lr-mu" in help_text and "[default: 0.4]" in help_text


def test_list_settings_take_comma_separated_items_checked_each():
    """CompareSettings.seeds and baselines: ``--seeds 0,1``; each item within the field's bounds, each once."""
    from bayesnas.cli.options import field_option

    seeds = next(f for f in dataclasses.fields(CompareSettings) if f.name == "seeds")

    @field_option(seeds)
    def echo(seeds):
        return seeds

    import click

    command = click.command()(echo)
    assert command.main(["--seeds", "3, 1,2"], standalone_mode=False) == (3, 1, 2)
    assert command.main([], standalone_mode=False) is None  # not given: the config decides
    for bad, message in (("0,0", "expected each seed once"), ("0,-1", "seeds=-1: expected an integer >= 0"),
                         ("1,x", "expected comma-separated seeds")):
        result = CliRunner().invoke(command, ["--seeds", bad])
        assert result.exit_code == 2 and message in result.output, result.output
    help_text = CliRunner().invoke(main, ["compare", "--help"]).output
    assert "[default: darts_v2,conv4]" in help_text and "--no-match-params" in help_text


def torch_after(code):
    out = subprocess.run([sys.executable, "-c", code + "\nimport sys; print('torch' in sys.modules)"],
                         capture_output=True, text=True, check=True)
    return out.stdout.strip().splitlines()[-1]


@pytest.mark.parametrize("args", [["--help"], ["fit", "--help"], ["retrain", "--help"], ["data", "info"]])
def test_light_commands_do_not_import_torch(args):
    code = ("import sys\nfrom bayesnas.cli.main import main\n"
            f"try:\n    main({args!r}, standalone_mode=False)\nexcept SystemExit:\n    pass")
    assert torch_after(code) == "False", f"bayesnas {' '.join(args)} imported torch"
