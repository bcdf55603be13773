"""TensorBoard event files of fit, retrain and compare, read back with TensorBoard's own EventAccumulator."""
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2

from bayesnas.inference.tensorboard_logger import TensorBoardLogger


def events(folder):
    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    acc.Reload()
    return acc


def hparams_of(acc):
    content = acc.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    return plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info.hparams


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
