"""``derive-cell``, ``retrain``, ``evaluate``, ``compare`` through the command line: thin, clear errors."""
import csv
import json

import pytest
from click.testing import CliRunner

from bayesnas.cli.main import main
from bayesnas.config import RetrainConfig
from bayesnas.models import count_parameters
from bayesnas.models.genotypes import load_genotype
from bayesnas.training.loop import read_run_config
from bayesnas.training.retrain import build_retrain_network
from bayesnas.training.rundir import RunDirectory
from tests.data_fixtures import mini_imagenet_file, write_fewshot_file

TINY = ["--iterations", "2", "--channels", "2", "--layers", "1", "--queries", "1", "--inner-steps", "1",
        "--val-every", "2", "--val-tasks", "2", "--threads", "1", "--quiet"]


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def assert_one_line_error(result, *fragments):
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert lines[-1].startswith("Error:"), result.output
    for fragment in fragments:
        assert fragment in lines[-1], result.output


@pytest.fixture(scope="module")
def fit_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cli")
    (folder / "fit.json").write_text(json.dumps({"val_tasks": 2, "val_samples": 1}))
    out = folder / "fit"
    result = invoke("fit", "--out", out, "--config", folder / "fit.json", "--iterations", "1", "--channels", "2",
                    "--cells", "2", "--queries", "2", "--inner-steps", "1", "--val-every", "1", "--threads", "1",
                    "--quiet")
    assert result.exit_code == 0, result.output
    return out


def test_derive_cell(fit_run, tmp_path):
    result = invoke("derive-cell", fit_run)
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].split() == ["cell", "node", "source", "op", "prob"]
    assert sum(line.startswith("normal") for line in lines) == 8
    assert sum(line.startswith("reduce") for line in lines) == 8
    assert f"genotype: {fit_run / 'genotype.json'}" in result.output
    assert (fit_run / "genotype.png").exists()
    g = load_genotype(fit_run / "genotype.json")
    assert f"{g.normal[0][0]}" in lines[1]
    result = invoke("derive-cell", fit_run, "--task-seed", 4, "--out", tmp_path / "t.json", "--no-plot")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "t.json").exists() and not (tmp_path / "t.png").exists()
    assert "picture" not in result.output


def test_derive_cell_bad_input(tmp_path):
    assert_one_line_error(invoke("derive-cell", tmp_path / "nope"), "nope", "no such run folder")
    (tmp_path / "empty").mkdir()
    assert_one_line_error(invoke("derive-cell", tmp_path / "empty"), "config.json", "missing")


def test_retrain_resume_and_evaluate(fit_run, tmp_path):
    invoke("derive-cell", fit_run, "--no-plot")
    out = tmp_path / "r"
    result = invoke("retrain", fit_run, "--out", out, *TINY)
    assert result.exit_code == 0, result.output
    assert f"run folder: {out}" in result.output and "genotype:" in result.output
    assert "validation accuracy" in result.output
    config = json.load(open(out / "config.json"))
    assert config["arch"] == json.load(open(fit_run / "genotype.json")) and config["iterations"] == 2
    assert (out / "checkpoint_last.pt").exists() and (out / "checkpoint_best.pt").exists()
    result = invoke("retrain", "--resume", out, "--iterations", "3", "--quiet")
    assert result.exit_code == 0, result.output
    assert "3 iterations" in result.output
    result = invoke("retrain", "--resume", out, "--channels", "4")
    assert result.exit_code != 0 and "only --iterations" in result.output
    result = invoke("evaluate", out, "--tasks", "6", "--json", tmp_path / "e.json", "--quiet")
    assert result.exit_code == 0, result.output
    header, row = result.output.splitlines()[:2]
    assert "accuracy (95% CI)" in header and "%" in row and "genotype" in row and " 6 " in row
    saved = json.load(open(tmp_path / "e.json"))
    assert saved["tasks"] == 6 and len(saved["accuracies"]) == 6 and saved["inner_steps"] == 1


def test_retrain_config_file_and_flags(tmp_path):
    (tmp_path / "cfg.json").write_text(json.dumps({"channels": 3, "inner_lr": 0.2, "layers": 1}))
    result = invoke("retrain", "conv4", "--config", tmp_path / "cfg.json", "--out", tmp_path / "c", *TINY[:2],
                    "--queries", "1", "--inner-steps", "1", "--val-tasks", "2", "--quiet", "--first-order")
    assert result.exit_code == 0, result.output
    config = json.load(open(tmp_path / "c" / "config.json"))
    assert config["channels"] == 3 and config["inner_lr"] == 0.2 and config["first_order"] is True
    assert config["arch"] == "conv4"


def test_retrain_bad_input(tmp_path):
    (tmp_path / "bad.json").write_text("{not json")
    assert_one_line_error(invoke("retrain", tmp_path / "bad.json", "--out", tmp_path / "x", *TINY), "bad.json",
                          "not valid JSON")
    (tmp_path / "op.json").write_text(json.dumps({"normal": [["conv_9x9", 0]] * 8, "normal_concat": [2],
                                                  "reduce": [], "reduce_concat": [2]}))
    assert_one_line_error(invoke("retrain", tmp_path / "op.json", *TINY), "op.json", "unknown operation")
    assert_one_line_error(invoke("retrain", "resnet", *TINY), "resnet", "conv4, darts_v2")
    assert_one_line_error(invoke("retrain", "conv4", "--shots", "20", "--out", tmp_path / "s", *TINY),
                          "20 images", "20-shot 1-query needs 21")
    assert_one_line_error(invoke("retrain", "conv4", "--ways", "40", "--out", tmp_path / "w", *TINY),
                          "split 'val'", "40-way")
    assert_one_line_error(invoke("retrain", "conv4", "--config", tmp_path / "none.json", *TINY), "none.json")
    assert not (tmp_path / "x").exists()
    result = invoke("retrain", *TINY)
    assert result.exit_code != 0 and "GENOTYPE" in result.output


def test_evaluate_bad_input(fit_run, tmp_path):
    assert_one_line_error(invoke("evaluate", tmp_path / "gone"), "gone", "no such run folder")
    assert_one_line_error(invoke("evaluate", fit_run), "config.json", "unknown setting(s)",
                          "not usable as the config of a retrain run")


def val_acc_column(path):
    """``(iteration, val_acc)`` of the rows of a metrics.csv that validated, read with the csv module."""
    with open(path, newline="") as f:
        return [[int(float(r["iteration"])), float(r["val_acc"])] for r in csv.DictReader(f) if r["val_acc"]]


@pytest.mark.slow
def test_compare_tiny_budget(fit_run, tmp_path):
    invoke("derive-cell", fit_run, "--no-plot")
    out = tmp_path / "cmp"
    # 10 channels: below about 10 neighbouring widths differ by over 20% and some row could not be matched
    args = ["compare", fit_run, "--random-cells", "1", "--eval-tasks", "4", "--out", out, *TINY, "--channels", "10"]
    result = invoke(*args)
    assert result.exit_code == 0, result.output
    table = json.load(open(out / "compare.json"))
    labels = [r["label"] for r in table["rows"]]
    assert labels == ["fit", "darts_v2", "conv4", "random-1"]
    configs = [json.load(open(out / f"{label}-seed0" / "config.json")) for label in labels]
    for c in configs:  # one identical budget: everything but the architecture and its width is the same
        assert {k: v for k, v in c.items() if k not in ("arch", "channels")} == \
            {k: v for k, v in configs[0].items() if k not in ("arch", "channels")}
    assert len({json.dumps(c["arch"], sort_keys=True) for c in configs}) == 4
    # matched parameters: each row's width is in its run config and the JSON, its count within 10% of the target
    target = table["param_target"]
    assert isinstance(target, int) and table["eval_tasks"] == 4 and table["param_tolerance"] == 0.1
    assert len({c["channels"] for c in configs}) > 1 and min(c["channels"] for c in configs) == 10
    for row, c in zip(table["rows"], configs, strict=True):
        net = build_retrain_network(read_run_config(RunDirectory(row["run_dirs"][0]), RetrainConfig), 1)
        assert row["parameters"] == count_parameters(net, trainable_only=True)
        assert abs(row["parameters"] - target) <= 0.1 * target and row["channels"] == c["channels"]
        assert row["name"] == row["label"] and isinstance(row["accuracy"], float) and isinstance(row["ci95"], float)
        assert row["paired_difference"] == {"mean": row["difference"], "ci95": row["difference_ci95"],
                                            "against": "fit"}
        assert isinstance(row["paired_difference"]["mean"], float)
        curve = val_acc_column(out / f"{row['label']}-seed0" / "metrics.csv")
        assert list(row["val_curves"]) == ["0"] and row["val_curves"]["0"] == curve and curve[-1][0] == 2
    assert "parameters matched to" in result.output
    for label in labels:
        assert any(line.startswith(label) and "±" in line for line in result.output.splitlines())
    # running it again reuses the finished runs and gives the same table
    again = invoke(*args)
    assert again.exit_code == 0, again.output
    assert [r["accuracy"] for r in json.load(open(out / "compare.json"))["rows"]] == \
        [r["accuracy"] for r in table["rows"]]
    changed = invoke(*args, "--inner-lr", "0.1")
    assert_one_line_error(changed, "inner_lr", "another --out")
    assert configs[0]["rotations"] is True and table["config"]["rotations"] is True  # resolved: embedded Omniglot
    assert "vs fit (paired)" in result.output and table["reference"] == "fit"


@pytest.mark.slow
def test_compare_target_no_width_meets_is_one_line_and_writes_nothing(tmp_path):
    out = tmp_path / "cmp"
    assert_one_line_error(invoke("compare", "--baselines", "conv4", "--random-cells", "0", "--param-target", "10",
                                 "--out", out, *TINY), "conv4: no width gives 10 trainable parameters ±10%")
    assert not out.exists()
    # an earlier compare's finished row stays as it was when a later row cannot be matched
    assert invoke("compare", "--baselines", "darts_v2", "--random-cells", "0", "--eval-tasks", "2", "--out", out,
                  *TINY, "--layers", "3").exit_code == 0
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    darts = json.load(open(out / "compare.json"))["param_target"]
    assert_one_line_error(invoke("compare", "--baselines", "darts_v2", "--random-cells", "1", "--eval-tasks", "2",
                                 "--out", out, "--param-target", darts, *TINY, "--layers", "3"),
                          f"random-1: no width gives {darts:,} trainable parameters")
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    result = invoke("compare", "--no-match-params", "--param-target", "100", *TINY)
    assert result.exit_code == 2 and "drop --no-match-params" in result.output


@pytest.mark.slow
def test_compare_no_match_params_keeps_equal_channels(tmp_path):
    out = tmp_path / "cmp"
    result = invoke("compare", "--baselines", "darts_v2,conv4", "--random-cells", "0", "--eval-tasks", "2",
                    "--out", out, "--no-match-params", *TINY)
    assert result.exit_code == 0, result.output
    table = json.load(open(out / "compare.json"))
    assert table["param_target"] is None and [r["channels"] for r in table["rows"]] == [2, 2]
    assert [json.load(open(out / f"{n}-seed0" / "config.json"))["channels"] for n in ("darts_v2", "conv4")] == [2, 2]
    # until the plateau: 2 iterations cannot show one, so both runs continue, 1 at a time, to the cap
    result = invoke("compare", "--baselines", "darts_v2,conv4", "--random-cells", "0", "--eval-tasks", "2",
                    "--out", out, "--no-match-params", *TINY, "--max-iterations", "3", "--extend-by", "1")
    assert result.exit_code == 0, result.output
    assert [r["iterations"] for r in json.load(open(out / "compare.json"))["rows"]] == [[3], [3]]
    assert "2 iterations, +1 at a time while val rise > 0.02 (at most 3)" in result.output
    assert_one_line_error(invoke("compare", "--baselines", "conv4", "--random-cells", "0", "--out", tmp_path / "short",
                                 *TINY, "--max-iterations", "1"), "max_iterations=1: expected at least the configured")
    assert not (tmp_path / "short").exists()
    assert [r["parameters"] for r in table["rows"]] == [429, 157]  # DARTS_V2 with one cell, Conv-4, at 2 channels
    assert "equal channels 2" in result.output


def retrain_config_of(tmp_path, name, *flags):
    result = invoke("retrain", "conv4", "--out", tmp_path / name, *TINY, "--ways", "2", *flags)
    assert result.exit_code == 0, result.output
    return json.load(open(tmp_path / name / "config.json"))


def test_retrain_rotation_flags_override_the_default_both_ways(tmp_path):
    mini = mini_imagenet_file(tmp_path, side=16)
    assert retrain_config_of(tmp_path, "mini", "--data", mini)["rotations"] is False
    assert retrain_config_of(tmp_path, "mini-rot", "--data", mini, "--rotations")["rotations"] is True
    assert retrain_config_of(tmp_path, "omniglot-norot", "--no-rotations")["rotations"] is False


def test_selecting_on_test_classes_needs_the_flag_and_evaluate_warns(tmp_path):
    noval = write_fewshot_file(tmp_path / "noval.h5", "Omniglot (no validation classes)", {"train": 4, "test": 3},
                               side=16, channels=1)
    assert_one_line_error(invoke("retrain", "conv4", "--out", tmp_path / "refused", "--data", noval, *TINY),
                          "noval.h5: has no 'val' split", "--select-on test")
    assert not (tmp_path / "refused").exists()
    assert retrain_config_of(tmp_path, "run", "--data", noval, "--select-on", "test")["select_on"] == "test"
    result = invoke("evaluate", tmp_path / "run", "--tasks", "2", "--json", tmp_path / "e.json", "--quiet")
    assert result.exit_code == 0, result.output
    assert "warning: this run validated on the test classes" in result.output
    assert "optimistically biased" in json.load(open(tmp_path / "e.json"))["warnings"][0]


def test_compare_passes_the_protocol_flags(tmp_path, monkeypatch):
    import importlib

    class Stop(Exception):
        """Raised by the stand-in of the library call: nothing is trained."""

    seen = {}

    def capture(genotypes, config, **kwargs):
        seen["config"] = config
        raise Stop()

    monkeypatch.setattr(importlib.import_module("bayesnas.analysis.compare"), "compare", capture)
    assert isinstance(invoke("compare", "--no-rotations", "--select-on", "test", *TINY).exception, Stop)
    assert seen["config"].rotations is False and seen["config"].select_on == "test"
    assert isinstance(invoke("compare", "--rotations", *TINY).exception, Stop)
    assert seen["config"].rotations is True
    invoke("compare", *TINY)
    assert seen["config"].rotations is None and seen["config"].select_on == "val"  # resolved from the file
