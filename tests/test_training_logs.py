"""Log lines: through ``logging``, silenced by --quiet, only rank 0, and RUN/log.txt appended per session.

Also the warning that a derived cell is noise (run card, log, derive-cell) and metrics.csv's float32 text.
"""
import logging
import math

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from bayesnas.analysis import derive_cell
from bayesnas.cli.main import main
from bayesnas.training.card import build_run_card, fit_cell_warning
from bayesnas.training.diagnostics import UNDECIDED_TOP_PROB, undecided_warning
from bayesnas.training.logs import LOG_FILE, LOGGER_NAME, session_log
from bayesnas.training.rundir import RunDirectory, metric_text

TINY = ["--iterations", "2", "--channels", "2", "--cells", "2", "--tasks", "1", "--ways", "2", "--queries", "2",
        "--inner-steps", "1", "--val-every", "2", "--val-tasks", "2", "--threads", "1"]

child = logging.getLogger(LOGGER_NAME + ".training.loop")


def test_a_session_appends_its_lines_to_the_file_and_removes_its_handlers(tmp_path, capsys):
    path = tmp_path / LOG_FILE
    before = list(logging.getLogger(LOGGER_NAME).handlers)
    with session_log(str(path), console=False):
        child.info("first session")
    with session_log(str(path), console=True):
        child.info("second session")
        child.warning("careful")
    child.info("after the session")
    lines = path.read_text(encoding="utf-8").splitlines()
    assert [line.split(": ", 1)[1] for line in lines] == ["first session", "second session", "careful"]
    assert "INFO bayesnas.training.loop" in lines[0] and "WARNING" in lines[2]
    err = capsys.readouterr().err
    assert "first session" not in err  # console=False: the file only
    assert "second session\n" in err and "warning: careful\n" in err
    assert logging.getLogger(LOGGER_NAME).handlers == before


def test_a_rank_other_than_0_says_nothing_and_writes_no_file(tmp_path, capsys, caplog):
    caplog.set_level(logging.INFO)
    with session_log(None, console=True, rank=1):
        child.info("rank 1 info")
        child.warning("rank 1 warning")
        child.error("rank 1 error")
    assert [r.getMessage() for r in caplog.records] == ["rank 1 error"]  # what the user's own handlers see
    assert "rank 1" not in capsys.readouterr().err
    assert logging.getLogger(LOGGER_NAME).level == logging.NOTSET  # restored after the session


@pytest.fixture
def tiny(small_omniglot):
    return TINY + ["--data", small_omniglot]


@pytest.mark.slow
def test_quiet_silences_the_log_lines_and_log_txt_keeps_them_across_a_resume(tmp_path, tiny):
    out = str(tmp_path / "run")
    loud = CliRunner().invoke(main, ["fit", "--out", out, *tiny])
    assert loud.exit_code == 0, loud.output
    assert "[fit] iteration 2: val_acc=" in loud.stderr and "validate" in loud.stderr  # the validation's own bar
    assert "warning: derived cell: alpha was never stepped" in loud.stderr
    first = (tmp_path / "run" / LOG_FILE).read_text(encoding="utf-8")
    assert "[fit] iteration 2: val_acc=" in first and "alpha was never stepped" in first

    quiet = CliRunner().invoke(main, ["fit", "--resume", out, "--iterations", "4", "--quiet"])
    assert quiet.exit_code == 0, quiet.output
    assert "val_acc=" not in quiet.stderr and "warning" not in quiet.stderr and "validate" not in quiet.stderr
    log = (tmp_path / "run" / LOG_FILE).read_text(encoding="utf-8")
    assert log.startswith(first)  # appended, not rewritten
    assert "[fit] iterations 3 to 4 (resumed at 2)" in log and "[fit] iteration 4: val_acc=" in log


def test_a_cell_derived_before_alpha_moved_is_called_noise(tmp_path, tiny, caplog):
    out = tmp_path / "run"
    assert CliRunner().invoke(main, ["fit", "--out", str(out), *tiny, "--quiet"]).exit_code == 0
    card = build_run_card(str(out))
    assert len(card.warnings) == 1 and "within the architecture warm-up of 20 iterations" in card.warnings[0]
    assert f"- **warning**: {card.warnings[0]}" in (out / "README.md").read_text(encoding="utf-8")
    caplog.clear()
    cell = derive_cell(str(out), plot=False)
    assert cell.warning is not None and "alpha was never stepped" in cell.warning
    assert [(r.name, r.levelname) for r in caplog.records] == [("bayesnas.analysis.derive", "WARNING")]
    assert cell.warning in caplog.records[0].getMessage()

    shown = CliRunner().invoke(main, ["inspect", str(out), "--no-plots"])
    assert shown.exit_code == 0, shown.output
    summary = shown.output.split("\n\n")[0].splitlines()
    assert summary[0].startswith(f"fit run {out}: finished; iteration 2 of 2")
    assert f"warning: {card.warnings[0]}" in summary and "# Run card" not in shown.output
    whole = CliRunner().invoke(main, ["inspect", str(out), "--no-plots", "--card"])
    assert whole.output.startswith(card.markdown)


def test_the_posterior_must_leave_its_prior_after_the_warm_up():
    def state(scale, iteration):
        alpha = scale * torch.arange(10.0).repeat(14, 1)
        return {"iteration": iteration, "stateful": {"meta": {"alpha_normal": alpha, "alpha_reduce": alpha}}}

    config = {"arch_warmup": 5, "arch_lr": 0.1}
    assert "never stepped" in fit_cell_warning(config, state(1.0, 5))  # decided, but not by training
    assert "never stepped" in fit_cell_warning(dict(config, arch_lr=0.0), state(1.0, 50))
    top = float(torch.arange(10.0).mul(1e-3).softmax(-1).max())
    assert top < UNDECIDED_TOP_PROB
    assert f"mean top-op probability {top:.3f}" in fit_cell_warning(config, state(1e-3, 6))
    assert fit_cell_warning(config, state(1.0, 6)) is None
    assert fit_cell_warning({}, state(1.0, 20)) is not None  # an old config: the default warm-up (20)
    assert undecided_warning(21, arch_warmup=20, arch_lr=0.1, top_prob_mean=None) is None


def test_metrics_are_written_at_float32_precision_and_read_back(tmp_path):
    values = [0.25999999046325684, 1190.2969970703125, 0.5477225575051661, 1e-7, -3.5e12, 1e300]
    rows = [{"iteration": i + 1, "loss": v, "val_acc": None, "genotype": "g"} for i, v in enumerate(values)]
    rows.append({"iteration": 7, "loss": math.nan, "val_acc": 0.25999999046325684, "genotype": None})
    run = RunDirectory.create(tmp_path / "run", {"iterations": 7})
    run.write_metrics(rows)
    text = (tmp_path / "run" / "metrics.csv").read_text(encoding="utf-8").splitlines()
    assert text[1] == "1,0.26,,g" and text[3] == "3,0.5477226,,g" and text[6] == "6,1e+300,,g"
    back = run.read_metrics()
    for row, value in zip(back, values[:5], strict=False):
        assert np.float32(row["loss"]) == np.float32(value)  # the float32 value, exactly
    assert back[5]["loss"] == 1e300  # beyond float32: the full text
    assert math.isnan(back[6]["loss"]) and back[6]["val_acc"] == 0.26 and back[6]["genotype"] is None
    assert metric_text(3) == 3 and metric_text("x") == "x"
