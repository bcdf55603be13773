"""Run folders survive what happens to real runs: bad edits, kills at any moment, full disks, extensions."""
import errno
import json
import math
import os

import pytest
import torch
from click.testing import CliRunner

import bayesnas
from bayesnas.cli.main import main
from bayesnas.config import FitConfig
from bayesnas.training import RunDirectory, fit
from bayesnas.training.schedules import temperature
from tests.toy import Kill

TINY = dict(iterations=6, channels=2, cells=2, queries=1, inner_steps=1, val_every=3, checkpoint_every=2,
            val_tasks=2, val_samples=1, log_every=2, threads=1)


pytestmark = pytest.mark.usefixtures("tiny_on_small_data")


def one_line_error(result, *fragments):
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("Error:")]  # progress lines may interleave
    assert len(errors) == 1, result.output
    for fragment in fragments:
        assert fragment in errors[0], result.output


def test_resume_with_a_wrongly_typed_config_value_is_one_line(tmp_path):
    fit(FitConfig(**dict(TINY, iterations=2)), out=tmp_path / "run", progress=False)
    config = tmp_path / "run" / "config.json"
    before = json.loads(config.read_text())
    config.write_text(json.dumps(dict(before, iterations="many")))
    for args in (["fit", "--resume", tmp_path / "run"], ["fit", "--resume", tmp_path / "run", "--iterations", "9"]):
        result = CliRunner().invoke(main, [str(a) for a in args])
        one_line_error(result, str(config), "iterations='many': expected an integer")
    assert json.loads(config.read_text())["iterations"] == "many"  # nothing rewritten


@pytest.mark.slow
def test_a_run_killed_before_its_first_checkpoint_resumes_exactly(tmp_path):
    config = FitConfig(**dict(TINY, iterations=3, checkpoint_every=3, val_every=3))
    full = fit(config, out=tmp_path / "full", progress=False)

    def kill_at_2(iteration, row):
        if iteration == 2:
            raise Kill()

    with pytest.raises(Kill):
        fit(config, out=tmp_path / "killed", progress=False, callbacks=[kill_at_2])
    assert RunDirectory(tmp_path / "killed").load_checkpoint()["iteration"] == 0  # written before iteration 1
    resumed = fit(resume=tmp_path / "killed", progress=False)
    assert [r["loss"] for r in resumed.rows] == [r["loss"] for r in full.rows]
    assert torch.equal(resumed.meta.alpha_normal, full.meta.alpha_normal)


@pytest.mark.slow
def test_killed_between_the_best_and_the_last_checkpoint_the_pair_stays_consistent(tmp_path, monkeypatch):
    """``last`` never records a best score that ``best`` does not hold, and resuming repairs the rest."""
    full = fit(FitConfig(**TINY), out=tmp_path / "full", progress=False)
    real_save = RunDirectory.save_checkpoint

    def save_then_die_on_the_second_file(self, state, best=False):
        if not (best and state["iteration"] == 3):
            return real_save(self, state, best)
        writes = []
        real_torch_save = torch.save

        def counting(obj, path):
            writes.append(path)
            if len(writes) == 2:
                raise Kill()
            real_torch_save(obj, path)

        monkeypatch.setattr(torch, "save", counting)
        try:
            real_save(self, state, best)
        finally:
            monkeypatch.setattr(torch, "save", real_torch_save)

    monkeypatch.setattr(RunDirectory, "save_checkpoint", save_then_die_on_the_second_file)
    with pytest.raises(Kill):
        fit(FitConfig(**TINY), out=tmp_path / "killed", progress=False)
    monkeypatch.undo()
    run = RunDirectory(tmp_path / "killed")
    last, best = run.load_checkpoint("last"), run.load_checkpoint("best")
    assert last["iteration"] == 2 and best["iteration"] == 3
    assert best["best"] >= last["best"]
    assert not [f for f in os.listdir(run.path) if f.endswith(".tmp")]
    resumed = fit(resume=run.path, progress=False)
    assert [r.get("val_acc") for r in resumed.rows] == [r.get("val_acc") for r in full.rows]
    full_best = RunDirectory(tmp_path / "full").load_checkpoint("best")
    assert run.load_checkpoint("best")["iteration"] == full_best["iteration"]
    assert torch.equal(run.load_checkpoint("best")["stateful"]["meta"]["mu"], full_best["stateful"]["meta"]["mu"])


@pytest.mark.slow
@pytest.mark.parametrize("failure", [errno.ENOSPC, errno.EROFS], ids=["disk-full", "read-only"])
def test_a_failed_checkpoint_write_is_one_line_and_keeps_the_previous_checkpoint(tmp_path, monkeypatch, failure):
    real_torch_save = torch.save

    def fail_at_iteration_4(obj, path):
        if isinstance(obj, dict) and obj.get("iteration") == 4:
            with open(path, "wb") as f:
                f.write(b"PK\x03\x04 half a checkpoint")
            raise OSError(failure, os.strerror(failure))
        real_torch_save(obj, path)

    monkeypatch.setattr(torch, "save", fail_at_iteration_4)
    out = tmp_path / "run"
    args = ["fit", "--data", TINY["data"], "--out", out, "--iterations", "6", "--channels", "2", "--cells", "2",
            "--queries", "1", "--inner-steps", "1", "--val-every", "3", "--checkpoint-every", "2", "--val-tasks", "2",
            "--threads", "1", "--quiet"]
    one_line_error(CliRunner().invoke(main, [str(a) for a in args]),
                   f"{out / 'checkpoint_last.pt'}: cannot write ({os.strerror(failure)})",
                   "the previous checkpoint_last.pt, if any, is unchanged")
    monkeypatch.undo()
    run = RunDirectory(out)
    assert run.load_checkpoint()["iteration"] == 3  # the best-and-last checkpoint written at the validation
    assert sorted(f for f in os.listdir(out) if f.startswith(".")) == []
    assert bayesnas.load_run(out).iteration == 3


def test_a_read_only_folder_is_one_clear_error(tmp_path, monkeypatch):
    import tempfile

    from bayesnas.errors import WriteError

    def refuse(*args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    run = RunDirectory.create(tmp_path / "r", {"x": 1})
    monkeypatch.setattr(tempfile, "mkstemp", refuse)
    with pytest.raises(WriteError, match=r"checkpoint_last\.pt: cannot write \(Read-only file system\)"):
        run.save_checkpoint({"iteration": 1})


@pytest.mark.slow
def test_extending_a_finished_run_keeps_the_temperature_continuous(tmp_path):
    config = FitConfig(**dict(TINY, iterations=4, tau_start=1.0, tau_end=0.25))
    fit(config, out=tmp_path / "run", progress=False)
    result = fit(FitConfig(**dict(TINY, iterations=7)), resume=tmp_path / "run", progress=False)
    taus = [r["tau"] for r in result.rows]
    assert taus[:4] == pytest.approx([1.0, 0.25 ** (1 / 3), 0.25 ** (2 / 3), 0.25])
    assert taus[4:] == pytest.approx([0.25] * 3)  # stays at tau_end, no jump back to 0.63
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["iterations"] == 7 and saved["schedule_iterations"] == 4
    # a checkpoint of the first part is evaluated at the temperature it was trained with
    run = bayesnas.load_run(tmp_path / "run")
    assert run.temperature() == pytest.approx(0.25)
    assert temperature(run.config, 2) == pytest.approx(taus[1])
    # extending once more keeps the first budget's schedule
    again = fit(FitConfig(**dict(TINY, iterations=8)), resume=tmp_path / "run", progress=False)
    assert again.rows[-1]["tau"] == pytest.approx(0.25)
    assert json.loads((tmp_path / "run" / "config.json").read_text())["schedule_iterations"] == 4


def test_the_temperature_schedule_is_the_same_function_before_and_after_extension():
    short, long = FitConfig(iterations=10), FitConfig(iterations=10).extended(25)
    assert long.iterations == 25 and long.schedule_iterations == 10
    for it in range(1, 11):
        assert temperature(long, it) == temperature(short, it)
    assert all(math.isclose(temperature(long, it), short.tau_end) for it in range(10, 26))
