"""The run card RUN/README.md: written when a run ends or is stopped, rebuilt from the folder, printed by inspect."""
import hashlib
import json
import platform
import sys

import pyro
import pytest
import torch
from click.testing import CliRunner

from bayesnas.analysis import evaluate
from bayesnas.analysis.derive import chosen_edges_table, format_edges_table
from bayesnas.analysis.posterior import EdgePosterior
from bayesnas.cli.common import cli_command
from bayesnas.cli.main import main
from bayesnas.config import FitConfig
from bayesnas.errors import RunError
from bayesnas.training import RunDirectory, fit
from bayesnas.training.card import build_run_card
from bayesnas.training.records import python_call, read_sessions

TINY = dict(iterations=3, channels=2, cells=2, tasks=1, ways=2, queries=2, inner_steps=1, val_every=2,
            checkpoint_every=2, val_tasks=2, val_samples=1, log_every=1, threads=1)
RETRAIN = ["--iterations", "2", "--channels", "2", "--queries", "1", "--inner-steps", "1", "--val-every", "2",
           "--val-tasks", "2", "--threads", "1", "--quiet"]


pytestmark = pytest.mark.usefixtures("tiny_on_small_data")


def card_text(path):
    with open(path / "README.md", encoding="utf-8") as f:
        return f.read()


@pytest.mark.slow
def test_card_of_a_finished_fit(tmp_path):
    run = tmp_path / "run"
    result = fit(FitConfig(**TINY), out=run, progress=False)
    text = card_text(run)
    card = build_run_card(run)
    assert text == card.markdown  # the folder alone rebuilds the same card
    assert (card.kind, card.status, card.iteration, card.iterations, card.checkpoint_iteration) == \
        ("fit", "finished", 3, 3, 3)
    assert "- iterations: 3 of 3 reached; last checkpoint at iteration 3" in text

    assert "bayesnas.training.fit(config=FitConfig(" in text and "iterations=3" in text
    assert f"out={str(run)!r})" in text
    with open(TINY["data"], "rb") as f:
        sha = hashlib.sha256(f.read()).hexdigest()
    assert card.data_sha256 == sha and f"- sha256: `{sha}`" in text
    assert f"torch {torch.__version__}" in text and f"pyro-ppl {pyro.__version__}" in text
    assert f"python {platform.python_version()}" in text and "bayesnas 0.1.0" in text
    assert "- device: cpu; precision: fp32; torch CPU threads: 1; processes: 1" in text

    final = result.rows[-1]
    assert f"| final | 3 | {final['loss']:.4g} |" in text
    best = max((r for r in result.rows if "val_acc" in r), key=lambda r: r["val_acc"])
    assert f"| best val_acc | {best['iteration']} |" in text

    post = EdgePosterior.from_meta(result.meta)
    assert card.genotype == post.derive()
    assert format_edges_table(chosen_edges_table(*post.probs)) in text
    assert "![derived cell](derived_cell.png)" in text
    with open(run / "derived_cell.png", "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"

    for command in (f"bayesnas fit --resume {run} --iterations 6\n", f"bayesnas derive-cell {run}\n",
                    f"bayesnas retrain {run} --out {run}-retrain --data {TINY['data']}\n",
                    f"bayesnas evaluate {run}-retrain --json {run}-retrain/evaluation.json\n"):
        assert command in text
    assert "tensorboard --logdir" not in text  # no event files in this run


@pytest.mark.slow
def test_card_is_written_when_the_run_is_interrupted_and_a_resume_extends_it(tmp_path):
    run = tmp_path / "run"

    def interrupt_at_3(iteration, row):
        if iteration == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fit(FitConfig(**dict(TINY, iterations=4)), out=run, progress=False, callbacks=[interrupt_at_3])
    text = card_text(run)
    assert "- status: stopped (KeyboardInterrupt)" in text
    assert "- iterations: 3 of 4 reached; last checkpoint at iteration 2" in text
    assert f"bayesnas fit --resume {run}\n" in text  # not finished: no more iterations needed

    fit(resume=run, progress=False, command="bayesnas fit --resume somewhere")
    card = build_run_card(run)
    assert [s["status"] for s in card.sessions] == ["stopped (KeyboardInterrupt)", "finished"]
    assert [(s["start_iteration"], s["reached_iteration"]) for s in card.sessions] == [(0, 3), (2, 4)]
    assert "Continued at iteration 2" in card.markdown and "bayesnas fit --resume somewhere" in card.markdown
    assert "- iterations: 4 of 4 reached; last checkpoint at iteration 4" in card_text(run)
    # a run made before run cards existed, then resumed: the card does not pass the resume off as its start
    with open(run / "sessions.json", "w") as f:
        json.dump(card.sessions[1:], f)
    text = build_run_card(run).markdown
    assert "The session that started it was not recorded" in text and "Started in" not in text
    assert "Continued at iteration 2" in text


def test_card_of_a_retrain_run_made_by_the_cli_shows_its_evaluation(tmp_path, monkeypatch):
    run = tmp_path / "c4"
    argv = ["/usr/local/bin/bayesnas", "retrain", "conv4", "--out", str(run), *RETRAIN]
    monkeypatch.setattr(sys, "argv", argv)
    result = CliRunner().invoke(main, argv[1:])
    assert result.exit_code == 0, result.output
    text = card_text(run)
    assert "```\n" + cli_command(argv) + "\n```" in text and cli_command(argv).startswith("bayesnas retrain conv4")
    assert "`conv4`, 2 channels." in text and "None yet in evaluation.json" in text
    assert f"bayesnas retrain --resume {run} --iterations 4\n" in text
    assert f"bayesnas evaluate {run} --json {run}/evaluation.json" in text

    evaluation = evaluate(str(run), tasks=2, json_out=str(run / "evaluation.json"))
    shown = CliRunner().invoke(main, ["inspect", str(run), "--card"])
    assert shown.exit_code == 0, shown.output
    shown_accuracy = f"{100 * evaluation.accuracy:.2f}% ± {100 * evaluation.ci95:.2f}% (95% CI)"
    assert f"{shown_accuracy} over 2 5-way 1-shot" in shown.output
    assert shown.output.strip() == card_text(run).strip()  # inspect refreshed the card and printed it


def test_python_calls_and_command_lines_are_recorded_as_typed():
    assert python_call("bayesnas.training.fit", config=FitConfig(iterations=6, variant="softmax"), out="runs/a",
                       resume=None) == "bayesnas.training.fit(config=FitConfig(iterations=6, variant='softmax'), " \
                                       "out='runs/a')"
    assert cli_command(["/x/bin/bayesnas", "fit", "--out", "runs/my run"]) == "bayesnas fit --out 'runs/my run'"


def test_a_broken_sessions_file_is_one_clear_error(tmp_path):
    run = RunDirectory.create(tmp_path / "run", FitConfig(**TINY).to_dict())
    with open(run.file("sessions.json"), "w") as f:
        json.dump([{"command": "bayesnas fit"}], f)
    with pytest.raises(RunError, match="sessions.json: expected a JSON list of session records with keys"):
        read_sessions(run.path)
    result = CliRunner().invoke(main, ["inspect", run.path])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1 and "sessions.json" in result.output
