"""``derive-cell``, ``retrain``, ``evaluate``, ``compare`` through the command line: thin, clear errors."""
import json

import pytest
from click.testing import CliRunner

from bayesnas.cli.main import main
from bayesnas.models.genotypes import load_genotype
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
    assert_one_line_error(invoke("evaluate", fit_run), "config.json", "unknown setting(s)", "not usable as the config of a retrain run")


def test_compare_tiny_budget(fit_run, tmp_path):
    invoke("derive-cell", fit_run, "--no-plot")
    out = tmp_path / "cmp"
    args = ["compare", fit_run, "--random-cells", "1", "--eval-tasks", "4", "--out", out, *TINY]
    result = invoke(*args)
    assert result.exit_code == 0, result.output
    table = json.load(open(out / "compare.json"))
    labels = [r["label"] for r in table["rows"]]
    assert labels == ["fit", "darts_v2", "conv4", "random-1"]
    configs = [json.load(open(out / f"{label}-seed0" / "config.json")) for label in labels]
    for c in configs:  # one identical budget: everything but the architecture is the same
        assert {k: v for k, v in c.items() if k != "arch"} == {k: v for k, v in configs[0].items() if k != "arch"}
    assert len({json.dumps(c["arch"], sort_keys=True) for c in configs}) == 4
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

    monkeypatch.setattr(importlib.import_module("bayesnas.inference.compare"), "compare", capture)
    assert isinstance(invoke("compare", "--no-rotations", "--select-on", "test", *TINY).exception, Stop)
    assert seen["config"].rotations is False and seen["config"].select_on == "test"
    assert isinstance(invoke("compare", "--rotations", *TINY).exception, Stop)
    assert seen["config"].rotations is True
    invoke("compare", *TINY)
    assert seen["config"].rotations is None and seen["config"].select_on == "val"  # resolved from the file
