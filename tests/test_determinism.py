"""--deterministic, and what a run records about the numerics of its device."""
import json
import os

import pytest
import torch
from click.testing import CliRunner

from bayesnas.cli.main import main
from bayesnas.config import FitConfig, RetrainConfig
from bayesnas.device import determinism, numerics
from bayesnas.errors import ConfigError
from bayesnas.training import RunDirectory, fit, retrain
from bayesnas.training.records import read_sessions

TINY = dict(iterations=2, channels=2, queries=2, inner_steps=1, val_every=2, val_tasks=2, val_samples=1, threads=1)
#: the text torch's RuntimeError has for an op without a deterministic kernel
#: (at::globalContext().alertNotDeterministic)
TORCH_ALERT = ("scatter_add_cuda_kernel does not have a deterministic implementation, but you set "
               "'torch.use_deterministic_algorithms(True)'. You can turn off determinism just for this operation, "
               "or you can use the 'warn_only=True' option, if that's acceptable for your application.")


def test_determinism_sets_every_switch_and_restores_them():
    assert not torch.are_deterministic_algorithms_enabled()
    benchmark = torch.backends.cudnn.benchmark
    with determinism(True):
        assert torch.are_deterministic_algorithms_enabled()
        assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] in (":4096:8", ":16:8")
        n = numerics(torch.device("cpu"))
        assert n["deterministic"] and n["cudnn_deterministic"] and n["mkldnn_deterministic"]
    assert not torch.are_deterministic_algorithms_enabled()
    assert not torch.backends.cudnn.deterministic and torch.backends.cudnn.benchmark == benchmark
    with determinism(False):
        assert not torch.are_deterministic_algorithms_enabled()
    with pytest.raises(ConfigError, match=r"^--deterministic: scatter_add_cuda_kernel has no deterministic "
                                          r"implementation on this device \(torch.use_deterministic_algorithms\); run "
                                          r"without --deterministic$"):
        with determinism(True):
            raise RuntimeError(TORCH_ALERT)
    with pytest.raises(RuntimeError, match="other"):  # any other error passes through
        with determinism(True):
            raise RuntimeError("other")


def test_a_deterministic_run_records_it_and_its_devices_numerics(tmp_path, small_omniglot):
    plain = fit(FitConfig(data=small_omniglot, **TINY), out=tmp_path / "plain", progress=False)
    det = fit(FitConfig(data=small_omniglot, deterministic=True, **TINY), out=tmp_path / "det", progress=False)
    assert not torch.are_deterministic_algorithms_enabled()  # the session's setting ends with it
    # the CPU's kernels are deterministic already: the switch changes nothing here
    assert [r["loss"] for r in det.rows] == [r["loss"] for r in plain.rows]
    assert json.loads((tmp_path / "det" / "config.json").read_text())["deterministic"] is True
    record = read_sessions(tmp_path / "det")[-1]["numerics"]
    assert record["deterministic"] is True and record["cudnn_benchmark"] is False
    assert read_sessions(tmp_path / "plain")[-1]["numerics"]["deterministic"] is False
    assert record["device_name"] and set(record) >= {"tf32_matmul", "tf32_cudnn", "cublas_workspace"}
    card = (tmp_path / "det" / "README.md").read_text()
    assert "deterministic algorithms: on" in card and "TF32 cuDNN convolutions:" in card
    assert f"device name: {record['device_name']};" in card


@pytest.mark.parametrize("existed", [False, True])
def test_an_op_without_a_deterministic_kernel_is_one_line_and_leaves_nothing(tmp_path, small_omniglot, monkeypatch,
                                                                            existed):
    import bayesnas.training.search as search

    real = search.svi_step

    def step(*args, **kwargs):
        if torch.are_deterministic_algorithms_enabled():
            raise RuntimeError(TORCH_ALERT)
        return real(*args, **kwargs)

    monkeypatch.setattr(search, "svi_step", step)
    out = tmp_path / "run"
    if existed:  # a folder the user made: it stays, and holds what it held
        out.mkdir()
        (out / "notes.txt").write_text("mine")
    args = ["fit", "--out", str(out), "--deterministic", "--data", small_omniglot, "--quiet",
            *[x for k, v in TINY.items() for x in (f"--{k.replace('_', '-')}", str(v))]]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert result.output.strip().splitlines() == [
        "Error: --deterministic: scatter_add_cuda_kernel has no deterministic implementation on this device "
        "(torch.use_deterministic_algorithms); run without --deterministic"]
    assert sorted(os.listdir(out)) == ["notes.txt"] if existed else not out.exists()
    assert not torch.are_deterministic_algorithms_enabled()
    result = CliRunner().invoke(main, [a for a in args if a != "--deterministic"])  # the same folder works
    assert result.exit_code == 0, result.output


def test_retrain_takes_the_setting_too(tmp_path):
    result = retrain("conv4", RetrainConfig(iterations=1, channels=4, queries=2, inner_steps=1, val_every=1,
                                            val_tasks=2, deterministic=True), out=tmp_path / "r", progress=False)
    assert result.config.deterministic
    assert read_sessions(tmp_path / "r")[-1]["numerics"]["deterministic"] is True
    assert RunDirectory(tmp_path / "r").config()["deterministic"] is True
