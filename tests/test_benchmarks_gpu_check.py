"""The Python pieces of benchmarks/gpu_check.sh, run on the CPU (the script itself needs a GPU)."""
import json
import subprocess

import pytest

from bayesnas.data import open_data
from benchmarks import gpu_check


def test_the_script_parses():
    assert subprocess.run(["bash", "-n", "benchmarks/gpu_check.sh"], capture_output=True).returncode == 0


def test_synthetic_data_is_mini_imagenet_shaped(tmp_path):
    data = open_data(str(gpu_check.synthetic_data(tmp_path / "m.h5", classes=(6, 5, 5), images=10)))
    assert data.image_size == (84, 84) and data.channels == 3
    assert [len(data.split(s).class_names) for s in ("train", "val", "test")] == [6, 5, 5]


@pytest.mark.slow
def test_kill_resume_and_resume_on_another_device_report_what_happened(tmp_path, small_omniglot):
    result = gpu_check.main(["kill-resume", "--data", small_omniglot, "--work", str(tmp_path / "kr"),
                             "--json", str(tmp_path / "kr.json")])
    assert json.load(open(tmp_path / "kr.json")) == json.loads(json.dumps(result))
    assert result["killed_exit_code"] == 9 and result["checkpoint_when_killed"] == 1  # killed after iteration 2
    assert result["resume_exit_code"] == 0, result["resume_stderr"]
    assert result["metrics_identical"] and result["parameters_identical"]
    assert result["max_abs_parameter_difference"] == 0.0 and len(result["losses_resumed"]) == 3
    moved = gpu_check.main(["resume-on", "--run", str(tmp_path / "kr" / "full"), "--device", "cpu"])
    assert moved["exit_code"] == 0 and moved["notes"] == [] and moved["iteration"] == 4
    assert moved["devices_of_sessions"] == ["cpu", "cpu"]
