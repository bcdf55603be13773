"""Which device a command runs on: a run keeps the device it was made on unless told
otherwise, saved evaluations are reused on the same device type only, and a device this
machine lacks is one line naming it, with nothing written. GPUs are stood in for by
patching torch.cuda's queries (the suite hides real ones: tests/conftest.py)."""
import json
import os
import shutil

import pytest
import torch
from click.testing import CliRunner

from bayesnas.cli.main import main
from bayesnas.config import FitConfig, RetrainConfig, resume_overrides
from bayesnas.device import resolve_device
from bayesnas.errors import ConfigError
from bayesnas.training import fit, retrain
from bayesnas.training.loop import resume_device, run_device

FIT = dict(iterations=1, channels=2, queries=2, inner_steps=1, val_every=1, val_tasks=2, val_samples=1, threads=1)


@pytest.fixture
def gpus(monkeypatch):
    """Pretend this machine has ``n`` GPUs (torch.cuda's queries only: nothing runs on them)."""
    def set_count(n):
        monkeypatch.setattr(torch.cuda, "is_available", lambda: n > 0)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: n)
    return set_count


@pytest.fixture(scope="module")
def cpu_fit(tmp_path_factory, small_omniglot):
    out = tmp_path_factory.mktemp("devices") / "fit"
    fit(FitConfig(data=small_omniglot, **FIT), out=out, progress=False)
    return out


@pytest.fixture(scope="module")
def cpu_retrain(tmp_path_factory):
    out = tmp_path_factory.mktemp("devices") / "retrain"
    retrain("conv4", RetrainConfig(iterations=1, channels=4, queries=2, inner_steps=1, val_every=1, val_tasks=2,
                                   threads=1), out=out, progress=False)
    return out


def test_a_missing_device_is_one_line_naming_it(gpus):
    for name in ("cuda", "cuda:7"):
        with pytest.raises(ConfigError, match=f"^--device {name}: CUDA was requested but no CUDA device is available$"):
            resolve_device(name)
    gpus(1)
    with pytest.raises(ConfigError, match=r"^--device cuda:7: only 1 CUDA device\(s\) present$"):
        resolve_device("cuda:7")
    assert resolve_device("cuda:0") == torch.device("cuda:0") and resolve_device("auto").type == "cuda"
    with pytest.raises(ConfigError, match="^--device gpu: expected 'auto', 'cpu', 'cuda' or 'cuda:N'$"):
        resolve_device("gpu")


def test_a_cpu_run_stays_on_the_cpu_on_a_gpu_machine_unless_told(cpu_fit, cpu_retrain, gpus):
    gpus(2)
    for run in (cpu_fit, cpu_retrain):
        assert json.load(open(run / "config.json"))["device"] == "auto"
        assert resume_device(run) == "cpu"  # "auto" would have picked CUDA
        assert run_device(run) == torch.device("cpu")
        assert resume_device(run, {"device": "cuda"}) == "cuda"  # the user's --device
        assert resume_device(run, {"iterations": 5}) == "cpu"
        assert resume_device(run, FitConfig()) == "cpu"  # a dataclass's default "auto" is not a request
        assert run_device(run, "cuda:1") == torch.device("cuda:1")


def test_a_gpu_run_resumes_where_auto_points(cpu_fit, tmp_path, gpus):
    run = tmp_path / "gpu"
    shutil.copytree(cpu_fit, run)
    sessions = json.load(open(run / "sessions.json"))
    sessions[-1]["device"] = "cuda:0"
    json.dump(sessions, open(run / "sessions.json", "w"))
    assert resume_device(run) == "auto"
    assert run_device(run) == torch.device("cpu")  # this machine has none
    gpus(1)
    assert run_device(run).type == "cuda"
    config = json.load(open(run / "config.json"))
    json.dump(dict(config, device="cuda:3"), open(run / "config.json", "w"))
    assert resume_device(run) == "cuda:3"
    assert run_device(run) == torch.device("cuda")  # cuda:3 is not here: where auto points


def test_resume_takes_device_and_iterations_only():
    assert resume_overrides({"iterations": 4, "device": "cpu", "channels": None}) == {"iterations": 4, "device": "cpu"}
    with pytest.raises(ConfigError, match="only --iterations, --device and --precision may be given"):
        resume_overrides({"channels": 3})


def one_line(result, text):
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    assert result.output.strip().splitlines() == [f"Error: {text}"]


def test_commands_on_a_device_this_machine_lacks_write_nothing(cpu_fit, cpu_retrain, tmp_path, small_omniglot):
    runner = CliRunner()
    missing = "--device cuda: CUDA was requested but no CUDA device is available"
    one_line(runner.invoke(main, ["fit", "--out", str(tmp_path / "new"), "--data", small_omniglot, "--quiet",
                                  "--iterations", "1", "--device", "cuda"]), missing)
    assert not (tmp_path / "new").exists()
    run = tmp_path / "fit"
    shutil.copytree(cpu_fit, run)
    before = {name: (run / name).read_bytes() for name in os.listdir(run) if (run / name).is_file()}
    one_line(runner.invoke(main, ["fit", "--resume", str(run), "--iterations", "3", "--device", "cuda"]), missing)
    one_line(runner.invoke(main, ["derive-cell", str(run), "--task-seed", "1", "--device", "cuda:7"]),
             "--device cuda:7: CUDA was requested but no CUDA device is available")
    one_line(runner.invoke(main, ["inspect", str(run), "--calibration", "2", "--device", "cuda"]), missing)
    after = {name: (run / name).read_bytes() for name in os.listdir(run) if (run / name).is_file()}
    assert after == before  # no checkpoint, config, card or genotype written
    one_line(runner.invoke(main, ["evaluate", str(cpu_retrain), "--tasks", "2", "--device", "cuda",
                                  "--json", str(tmp_path / "e.json")]), missing)
    assert not (tmp_path / "e.json").exists()
    # on the device it has, the resume runs and says nothing about devices
    result = runner.invoke(main, ["fit", "--resume", str(run), "--iterations", "2", "--device", "cpu", "--quiet"])
    assert result.exit_code == 0, result.output
    assert json.load(open(run / "sessions.json"))[-1]["device"] == "cpu"
    assert json.load(open(run / "config.json"))["device"] == "auto"  # the run's setting stays its own


def test_a_saved_evaluation_is_reused_on_the_same_device_type_only(cpu_retrain, tmp_path, gpus):
    from bayesnas.analysis.evaluate import evaluate, previous_evaluation

    saved = tmp_path / "e.json"
    fresh = evaluate(cpu_retrain, tasks=3, json_out=saved)
    assert fresh.device == "cpu" and json.load(open(saved))["device"] == "cpu"
    assert previous_evaluation(saved, cpu_retrain, tasks=3).accuracies == fresh.accuracies
    assert previous_evaluation(saved, cpu_retrain, tasks=3, device="cpu") is not None
    gpus(1)
    assert previous_evaluation(saved, cpu_retrain, tasks=3, device="cuda") is None  # GPU numbers round otherwise
    assert previous_evaluation(saved, cpu_retrain, tasks=3) is not None  # the run's own device: the CPU
    record = json.load(open(saved))
    json.dump(dict(record, device="cuda:0"), open(tmp_path / "gpu.json", "w"))
    assert previous_evaluation(tmp_path / "gpu.json", cpu_retrain, tasks=3) is None
    assert previous_evaluation(tmp_path / "gpu.json", cpu_retrain, tasks=3, device="cuda:0") is not None
    # a file from before the device was recorded: made on the CPU (this project had no GPU then)
    json.dump({k: v for k, v in record.items() if k != "device"}, open(tmp_path / "old.json", "w"))
    assert previous_evaluation(tmp_path / "old.json", cpu_retrain, tasks=3).device == "cpu"


def test_compare_workers_spread_over_the_visible_gpus(monkeypatch):
    import queue

    from bayesnas.analysis.compare import init_worker, worker_gpus

    assert worker_gpus(4, "cuda", 2) == [0, 1, 0, 1]
    assert worker_gpus(3, "auto", 4) == [0, 1, 2]
    assert worker_gpus(2, "cuda:3", 4) == [3, 3]  # pinned by the user
    assert worker_gpus(2, "auto", 0) is None and worker_gpus(2, "cpu", 8) is None
    chosen = []
    monkeypatch.setattr(torch.cuda, "set_device", chosen.append)
    gpus = queue.Queue()
    for index in worker_gpus(3, "cuda", 2):
        gpus.put(index)
    for _ in range(3):  # what three workers' initialisers do
        init_worker(1, gpus)
    assert chosen == [0, 1, 0]
    init_worker(1, None)  # CPU workers: no GPU chosen
    assert chosen == [0, 1, 0]
