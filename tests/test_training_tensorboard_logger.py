"""TensorBoard event files of fit, retrain and compare, read back with TensorBoard's own EventAccumulator."""
import io
import math
import sys

import pytest
import torch
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2

from bayesnas.analysis import compare
from bayesnas.config import FitConfig, RetrainConfig
from bayesnas.errors import ConfigError
from bayesnas.training import fit
from bayesnas.training.tensorboard_logger import TensorBoardLogger

TINY = dict(iterations=3, channels=2, cells=2, tasks=1, ways=2, queries=2, inner_steps=1, val_every=2,
            checkpoint_every=2, val_tasks=2, val_samples=1, log_every=1, threads=1)
RETRAIN = dict(iterations=2, channels=2, layers=1, queries=1, inner_steps=1, val_every=2, val_tasks=2, threads=1)


# retraining Conv-4 needs 16 pixels or more: RETRAIN keeps the embedded 28x28
pytestmark = pytest.mark.usefixtures("tiny_on_small_data")


def events(folder):
    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    acc.Reload()
    return acc


def steps(acc, tag):
    return [e.step for e in acc.Scalars(tag)]


def hparams_of(acc):
    content = acc.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    return plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info.hparams


@pytest.mark.slow
def test_fit_logs_every_metric_the_posterior_summaries_images_and_the_config(tmp_path):
    result = fit(FitConfig(**TINY), out=tmp_path / "run", progress=False, tensorboard=True)
    acc = events(tmp_path / "run" / "tensorboard")
    scalars = set(acc.Tags()["scalars"])
    row_fields = {k for row in result.rows for k, v in row.items() if k != "iteration" and not isinstance(v, str)}
    assert row_fields <= scalars and "genotype" not in scalars  # the derived genotype is text
    assert {"loss", "loglik", "kl_theta", "kl_z", "acc", "tau", "kl_weight", "val_acc", "val_elbo"} <= row_fields
    assert scalars - row_fields <= {"edge_entropy_mean", "top_prob_mean"}
    # every step, also those between the logged diagnostics of the metrics rows
    assert steps(acc, "edge_entropy_mean") == steps(acc, "top_prob_mean") == [1, 2, 3]
    assert steps(acc, "loss") == [1, 2, 3] and steps(acc, "val_acc") == [2, 3]
    assert [e.value for e in acc.Scalars("loss")] == pytest.approx([r["loss"] for r in result.rows], rel=1e-6)
    # the posterior summaries of the final alpha, computed here without EdgePosterior
    alphas = [result.meta.alpha_normal.detach(), result.meta.alpha_reduce.detach()]
    entropy = torch.cat([torch.distributions.Categorical(logits=a).entropy() for a in alphas]).mean()
    top = torch.cat([a.softmax(-1).max(-1).values for a in alphas]).mean()
    assert acc.Scalars("edge_entropy_mean")[-1].value == pytest.approx(float(entropy), rel=1e-5)
    assert acc.Scalars("top_prob_mean")[-1].value == pytest.approx(float(top), rel=1e-5)
    assert 0 < entropy < math.log(10)

    assert set(acc.Tags()["images"]) == {"edge_posterior", "derived_cell"}
    for tag in ("edge_posterior", "derived_cell"):
        assert [e.step for e in acc.Images(tag)] == [2, 3]
        image = Image.open(io.BytesIO(acc.Images(tag)[-1].encoded_image_string))
        assert image.format == "PNG" and image.width > 500 and image.height > 300

    hp = hparams_of(acc)
    assert hp["iterations"].number_value == 3 and hp["variant"].string_value == "gumbel"
    assert hp["data"].string_value == TINY["data"] and hp["image_size"].string_value == "null"
    assert hp["batch_tasks"].string_value == "true" and hp["low_memory"].string_value == "false"


@pytest.mark.slow
def test_a_resumed_run_appends_without_duplicate_steps(tmp_path):
    def kill_at_3(iteration, row):
        if iteration == 3:
            raise KeyboardInterrupt

    config = FitConfig(**dict(TINY, iterations=4))
    with pytest.raises(KeyboardInterrupt):
        fit(config, out=tmp_path / "run", progress=False, tensorboard=True, callbacks=[kill_at_3])
    folder = tmp_path / "run" / "tensorboard"
    assert steps(events(folder), "loss") == [1, 2, 3]  # step 3 was logged, but checkpointed only up to 2
    resumed = fit(resume=tmp_path / "run", progress=False, tensorboard=True)
    acc = events(folder)
    assert steps(acc, "loss") == [1, 2, 3, 4]
    assert steps(acc, "val_acc") == [2, 4]
    # step 3 holds the resumed session's value, not the killed one's
    assert [e.value for e in acc.Scalars("loss")] == pytest.approx([r["loss"] for r in resumed.rows], rel=1e-6)
    assert [e.step for e in acc.Images("edge_posterior")] == [2, 4]


def test_row_fields_win_over_computed_scalars_and_only_numbers_are_logged(tmp_path):
    logger = TensorBoardLogger(tmp_path / "tb", hparams={"arch": {"normal": [["skip_connect", 0]]}, "data": None},
                               scalars=lambda iteration: {"edge_entropy_mean": 9.0, "top_prob_mean": 0.5})
    logger.log(1, {"iteration": 1, "loss": 0.25, "edge_entropy_mean": 1.5, "note": "text", "flag": True}, False)
    logger.log(2, {"iteration": 2, "loss": 0.125, "edge_entropy_mean": 1.0}, True)
    logger.close()
    acc = events(tmp_path / "tb")
    assert sorted(acc.Tags()["scalars"]) == ["edge_entropy_mean", "loss", "top_prob_mean"]
    assert [e.value for e in acc.Scalars("edge_entropy_mean")] == [1.5, 1.0]
    assert [e.value for e in acc.Scalars("top_prob_mean")] == [0.5, 0.5]
    assert hparams_of(acc)["arch"].string_value == '{"normal": [["skip_connect", 0]]}'


@pytest.mark.slow
def test_retrain_and_each_compare_run_log_into_their_own_folder(tmp_path):
    result = compare([], random_cells=0, baselines=["conv4"], config=RetrainConfig(**RETRAIN), seeds=[0, 1],
                     eval_tasks=2, out=tmp_path / "cmp", progress=False, tensorboard=True)
    for path in result.rows[0].run_dirs:
        acc = events(f"{path}/tensorboard")
        assert steps(acc, "loss") == [1, 2] and steps(acc, "val_acc") == [2]
        assert {"loss", "acc", "seconds", "val_acc"} == set(acc.Tags()["scalars"])
        assert acc.Tags()["images"] == []
        assert hparams_of(acc)["arch"].string_value == "conv4"
    seeds = [hparams_of(events(f"{p}/tensorboard"))["seed"].number_value for p in result.rows[0].run_dirs]
    assert seeds == [0, 1]


def test_without_the_package_tensorboard_is_one_clear_line(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from bayesnas.cli.main import main

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # what a missing package looks like
    for args in (["fit", "--iterations", "1", "--data", TINY["data"]],
                 ["retrain", "conv4", "--iterations", "1", "--data", TINY["data"]],
                 ["compare", "--baselines", "conv4", "--random-cells", "0", "--iterations", "1"]):
        out = tmp_path / args[0]
        result = CliRunner().invoke(main, args + ["--tensorboard", "--out", str(out), "--quiet"])
        assert result.exit_code == 1 and "Traceback" not in result.output, result.output
        assert result.output.strip().splitlines() == [
            "Error: --tensorboard needs the tensorboard package, which is not installed: "
            "pip install 'bayesnas[tensorboard]' (or: pip install tensorboard)"]
        assert not out.exists()
    with pytest.raises(ConfigError, match="bayesnas\\[tensorboard\\]"):
        fit(FitConfig(**TINY), out=tmp_path / "python", progress=False, tensorboard=True)
