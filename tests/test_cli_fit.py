"""``bayesnas fit`` through the command line: thin, clear errors, no tracebacks."""
import json
import math

import pytest
from click.testing import CliRunner

from bayesnas.cli.main import main
from tests.data_fixtures import mini_imagenet_file, write_fewshot_file

TINY = ["--iterations", "2", "--channels", "2", "--queries", "2", "--inner-steps", "1", "--val-every", "2",
        "--val-tasks", "2", "--threads", "1", "--quiet"]


@pytest.fixture(autouse=True)
def small_data(small_omniglot):
    """Every fit here runs on the 14x14 test subset unless a test gives --data itself."""
    TINY[:] = [a for a in TINY if a != "--data" and not a.endswith(".h5")] + ["--data", small_omniglot]
    yield


def invoke(*args):
    return CliRunner().invoke(main, list(args))


def test_fit_then_resume_with_more_iterations(tmp_path):
    out = str(tmp_path / "run")
    result = invoke("fit", "--out", out, *TINY)
    assert result.exit_code == 0, result.output
    assert f"run folder: {out}" in result.output
    assert "validation accuracy" in result.output
    config = json.load(open(tmp_path / "run" / "config.json"))
    assert config["iterations"] == 2 and config["channels"] == 2 and config["variant"] == "gumbel"
    assert config["rotations"] is True and config["select_on"] == "val"  # an Omniglot file: rotations on
    result = invoke("fit", "--resume", out, "--iterations", "3", "--quiet")
    assert result.exit_code == 0, result.output
    assert "after 3 iterations" in result.output


def test_config_file_is_overridden_by_flags(tmp_path):
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps({"channels": 2, "iterations": 5, "variant": "softmax"}))
    out = tmp_path / "run"
    result = invoke("fit", "--config", str(cfg), "--out", str(out), *TINY)
    assert result.exit_code == 0, result.output
    saved = json.load(open(out / "config.json"))
    assert saved["iterations"] == 2 and saved["variant"] == "softmax"


def one_line_error(result, *fragments):
    assert result.exit_code != 0
    assert "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert any(all(f in line for f in fragments) for line in lines), result.output


def test_user_mistakes_are_one_clear_line(tmp_path):
    one_line_error(invoke("fit", *TINY, "--data", str(tmp_path / "nope.h5")), "nope.h5")
    bad = tmp_path / "bad.h5"
    bad.write_bytes(b"not hdf5 at all")
    one_line_error(invoke("fit", *TINY, "--data", str(bad)), "bad.h5")
    one_line_error(invoke("fit", "--ways", "1", *TINY), "--ways")
    one_line_error(invoke("fit", "--ways", "500", "--out", str(tmp_path / "r"), *TINY), "500")
    one_line_error(invoke("fit", "--config", str(tmp_path / "missing.json"), *TINY), "missing.json")
    (tmp_path / "junk.json").write_text("{not json")
    one_line_error(invoke("fit", "--config", str(tmp_path / "junk.json"), *TINY), "junk.json")
    (tmp_path / "unknown.json").write_text('{"chanels": 3}')
    one_line_error(invoke("fit", "--config", str(tmp_path / "unknown.json"), *TINY), "chanels")
    one_line_error(invoke("fit", "--resume", str(tmp_path / "none")), "none")
    one_line_error(invoke("fit", "--device", "tpu", *TINY), "tpu")
    assert not (tmp_path / "r").exists() or not any((tmp_path / "r").glob("*.pt"))


def test_low_memory_image_size_and_step_sizes_reach_the_run_config(tmp_path):
    out = str(tmp_path / "run")
    result = invoke("fit", "--out", out, *TINY, "--low-memory", "--image-size", "7", "--meta-lr", "0.002",
                    "--arch-lr", "0.05")
    assert result.exit_code == 0, result.output
    config = json.load(open(tmp_path / "run" / "config.json"))
    assert config["low_memory"] is True and config["image_size"] == 7
    assert config["meta_lr"] == 0.002 and config["arch_lr"] == 0.05
    bad = invoke("fit", "--out", str(tmp_path / "bad"), *TINY, "--image-size", "99")
    assert bad.exit_code != 0 and "Traceback" not in bad.output
    assert "image_size 99 is larger than the stored 14x14" in bad.output


def test_shipped_cpu_config_is_valid():
    import os

    from bayesnas.config import FitConfig, resolve_config

    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "omniglot_cpu.json")
    cfg = resolve_config(FitConfig, config_file=path)
    cfg.validate()
    assert cfg.image_size == 14 and cfg.kl_weight == 0.001 and cfg.iterations == 700
    assert cfg.arch_schedule == "cosine" and 0 < cfg.arch_warmup < cfg.iterations


def test_shipped_weight_sharing_config_never_steps_alpha_and_the_readme_scores_cells():
    import os

    from bayesnas.config import FitConfig, resolve_config

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    ws = resolve_config(FitConfig, config_file=os.path.join(root, "configs", "omniglot_ws.json"))
    base = resolve_config(FitConfig, config_file=os.path.join(root, "configs", "omniglot_cpu.json"))
    ws.validate()
    assert ws.arch_warmup >= ws.iterations == 300  # weights only, under the uniform architecture
    changed = {k for k in FitConfig.__dataclass_fields__ if getattr(ws, k) != getattr(base, k)}
    assert changed == {"iterations", "arch_warmup"}  # otherwise the BASE search's settings
    with open(os.path.join(root, "README.md"), encoding="utf-8") as f:
        main = next(line for line in f if "pip install -e . &&" in line)
    assert "bayesnas fit --config configs/omniglot_ws.json --out runs/omniglot" in main
    assert "bayesnas derive-cell runs/omniglot --by score --candidates 40" in main


@pytest.mark.parametrize("settings, message", [
    ({"low_memory": "false"}, "low_memory='false': expected true or false"),
    ({"seed": 5.5}, "seed=5.5: expected an integer"),
    ({"cells": True}, "cells=True: expected an integer"),
    ({"kl_weight": "0.1"}, "kl_weight='0.1': expected a number"),
    ({"variant": 3}, "variant=3: expected a string"),
])
def test_config_file_values_of_the_wrong_type_are_one_clear_error(tmp_path, settings, message):
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps(settings))
    result = invoke("fit", "--config", str(cfg), "--out", str(tmp_path / "run"), *TINY)
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert message in result.output
    assert not (tmp_path / "run").exists()


def test_config_file_accepts_integers_for_numbers_and_null_for_optional_settings(tmp_path):
    from bayesnas.config import FitConfig, resolve_config

    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps({"kl_weight": 1, "image_size": None, "data": None}))
    assert resolve_config(FitConfig, config_file=str(cfg)).kl_weight == 1


@pytest.mark.slow
def test_fit_and_resume_with_tensorboard_record_their_command_lines(tmp_path, monkeypatch):
    import shlex
    import sys

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "tb"
    for args in (["fit", "--out", str(out), "--tensorboard", *TINY],
                 ["fit", "--resume", str(out), "--iterations", "3", "--tensorboard", "--quiet"]):
        monkeypatch.setattr(sys, "argv", ["/usr/bin/bayesnas", *args])
        result = invoke(*args)
        assert result.exit_code == 0, result.output
        assert "```\n" + shlex.join(["bayesnas", *args]) + "\n```" in (out / "README.md").read_text()
    events = EventAccumulator(str(out / "tensorboard"), size_guidance={"scalars": 0})
    events.Reload()
    assert [e.step for e in events.Scalars("loss")] == [1, 2, 3]
    assert f"bayesnas fit --resume {out} --iterations 6 --tensorboard\n" in (out / "README.md").read_text()


def fit_config_of(tmp_path, name, *flags):
    result = invoke("fit", "--out", str(tmp_path / name), *TINY, "--iterations", "1", "--ways", "2", *flags)
    assert result.exit_code == 0, result.output
    return json.load(open(tmp_path / name / "config.json"))


@pytest.mark.slow
def test_rotation_flags_override_the_default_both_ways(tmp_path):
    mini = mini_imagenet_file(tmp_path)
    assert fit_config_of(tmp_path, "mini", "--data", mini)["rotations"] is False
    assert fit_config_of(tmp_path, "mini-rot", "--data", mini, "--rotations")["rotations"] is True
    assert fit_config_of(tmp_path, "omniglot-norot", "--no-rotations")["rotations"] is False


def test_a_file_without_val_needs_select_on_test(tmp_path):
    noval = write_fewshot_file(tmp_path / "noval.h5", "Omniglot (no validation classes)", {"train": 6, "test": 5},
                               side=14, channels=1)
    result = invoke("fit", "--out", str(tmp_path / "refused"), *TINY, "--data", noval)
    one_line_error(result, "noval.h5: has no 'val' split", "--select-on test")
    assert len([line for line in result.output.splitlines() if line.strip()]) == 1
    assert not (tmp_path / "refused").exists()
    assert fit_config_of(tmp_path, "run", "--data", noval, "--select-on", "test")["select_on"] == "test"


ESTIMATOR_FLAGS = ("--z-per-example", "--straight-through", "--inner-tau-end", "--prune-below")


def test_the_estimator_settings_are_flags_and_one_z_per_image_needs_the_fused_supernet(tmp_path):
    help_text = invoke("fit", "--help").output
    assert all(flag in help_text for flag in ESTIMATOR_FLAGS)
    result = invoke("fit", "--out", str(tmp_path / "r"), *TINY, "--z-per-example", "--supernet", "reference")
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert errors == ["Error: --z-per-example needs the fused supernet; drop --supernet reference"]
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps({"z_per_example": True, "supernet": "reference"}))
    one_line_error(invoke("fit", "--config", str(cfg), "--out", str(tmp_path / "r"), *TINY),
                   "z_per_example=True", "supernet='fused'")
    for flag, value in (("--prune-below", "0.6"), ("--prune-below", "-0.1"), ("--inner-tau-end", "0")):
        result = invoke("fit", "--out", str(tmp_path / "r"), *TINY, flag, value)
        assert result.exit_code == 2 and flag in result.output, result.output
    assert not (tmp_path / "r").exists()


@pytest.mark.slow
def test_fit_with_every_estimator_setting_on(tmp_path):
    out = tmp_path / "run"
    result = invoke("fit", "--out", str(out), *TINY, "--iterations", "3", "--arch-warmup", "0", "--z-per-example",
                    "--straight-through", "--inner-tau-end", "0.05", "--prune-below", "0.1")
    assert result.exit_code == 0, result.output
    saved = json.load(open(out / "config.json"))
    assert (saved["z_per_example"], saved["straight_through"], saved["inner_tau_end"], saved["prune_below"]) == (
        True, True, 0.05, 0.1)
    rows = (out / "metrics.csv").read_text().splitlines()
    header = rows[0].split(",")
    losses = [float(r.split(",")[header.index("loss")]) for r in rows[1:] if r.split(",")[header.index("loss")]]
    assert len(losses) == 3 and all(math.isfinite(v) for v in losses)
