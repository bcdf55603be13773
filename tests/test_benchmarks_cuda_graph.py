"""benchmarks/cuda_graph.py and ``bench_fit.py --cuda-graph``: on the CPU, everything but the capture
(the refusal without a GPU, the static buffers, the step the graph would hold, the soft failure);
the capture itself in the test marked ``cuda``."""
import argparse
import json
import re
import subprocess
import sys

import pytest
import torch

from bayesnas.config import FitConfig
from bayesnas.data import open_data
from bayesnas.inference.unroll import deferred_finite_checks
from bayesnas.training.loop import task_samplers
from bayesnas.training.schedules import kl_weight, temperature
from bayesnas.training.search import step_gradients, svi_step
from benchmarks import bench_fit, cuda_graph

#: second order, a temperature and a KL weight that change between iterations 1 and 2
TINY = dict(channels=2, cells=2, inner_steps=1, queries=2, tasks=2, iterations=2, kl_anneal=2, first_order=False)


@pytest.fixture
def tiny(small_omniglot, monkeypatch):
    """(cfg, data, sampler) of TINY on the 14x14 subset, with the distributions' host checks off."""
    monkeypatch.delenv("BAYESNAS_VALIDATE", raising=False)
    cfg = FitConfig(data=small_omniglot, **TINY)
    data = open_data(cfg.data)
    sampler, _ = task_samplers(cfg, data, torch.device("cpu"))
    return cfg, data, sampler


def test_cuda_graph_without_a_cuda_device_is_one_line_and_a_failed_exit():
    done = subprocess.run([sys.executable, "benchmarks/bench_fit.py", "--cuda-graph", "--config", "default"],
                          capture_output=True, text=True)
    lines = done.stderr.strip().splitlines()
    assert done.returncode != 0 and len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    assert lines[0].startswith("bench_fit.py --cuda-graph: ")
    expected = "needs a CUDA device" if not torch.cuda.is_available() else "run it with --device cuda"
    assert expected in lines[0] and done.stdout == ""


def test_uncaptured_graphed_gradients_take_the_plain_steps_exactly(tiny):
    cfg, data, sampler = tiny
    cpu = torch.device("cpu")
    (plain, plain_opt, impl_cfg), (again, again_opt, _), (graphed, graphed_opt, _) = (
        bench_fit.build(cfg, "ours", data.channels, cpu) for _ in range(3))
    first = sampler.batch([0, 1])
    replay = cuda_graph.GraphedGradients(graphed, impl_cfg, first)
    check = bench_fit.same_step_check({"eager": (plain, plain_opt, impl_cfg, step_gradients),
                                       "eager_again": (again, again_opt, impl_cfg, step_gradients),
                                       "graph": (graphed, graphed_opt, impl_cfg, replay)}, first)
    assert check["loss"]["graph"] == check["loss"]["eager"] > 0 and check["largest_gradient"] > 0
    assert check["max_abs_difference_from_eager"]["graph"] == {"loss": 0.0, "gradient": 0.0,
                                                               "parameters_after_step": 0.0}
    # iteration 2: another meta-batch copied into the buffers, another temperature and KL weight
    second = sampler.batch([2, 3])
    torch.manual_seed(5)
    row = svi_step(plain, plain_opt, second, impl_cfg, 2)
    torch.manual_seed(5)
    graph_row = svi_step(graphed, graphed_opt, second, impl_cfg, 2, gradients=replay)
    assert row["tau"] == temperature(impl_cfg, 2) < temperature(impl_cfg, 1)
    assert row["kl_weight"] == kl_weight(impl_cfg, 2) == 2 * kl_weight(impl_cfg, 1)
    assert graph_row == row
    assert torch.equal(replay.batch.query_x, second.query_x) and replay.tau.item() == pytest.approx(row["tau"])
    for p, q in zip(plain.meta_parameters(), graphed.meta_parameters(), strict=True):
        assert torch.equal(p, q)
        assert (p.grad is None and q.grad is None) or torch.equal(p.grad, q.grad)


def test_the_step_to_capture_reads_nothing_on_the_host_and_makes_no_tensor_from_python_data(tiny):
    cfg, data, sampler = tiny
    meta, _, impl_cfg = bench_fit.build(cfg, "ours", data.channels, torch.device("cpu"))
    batch = sampler.batch([0, 1])
    replay = cuda_graph.GraphedGradients(meta, impl_cfg, batch)
    assert cuda_graph.capture_hazards(replay.compute) == {}
    # with the temperature a float, each relaxed-categorical site makes it a device tensor: a copy from the host

    def with_floats():
        with deferred_finite_checks():
            step_gradients(meta, batch, impl_cfg, 0.5, 1.0)

    hazards = cuda_graph.capture_hazards(with_floats)
    assert hazards and all(place.startswith("bayesnas/inference/model.py:") for place in hazards), hazards


def test_what_cannot_be_captured_is_refused_by_name(tiny, monkeypatch):
    cfg, data, sampler = tiny
    meta, _, impl_cfg = bench_fit.build(cfg, "ours", data.channels, torch.device("cpu"))
    batch = sampler.batch([0, 1])
    replay = cuda_graph.GraphedGradients(meta, impl_cfg, batch)
    with pytest.raises(ValueError, match="needs the meta-network on a CUDA device, not cpu"):
        replay.capture()
    with pytest.raises(ValueError, match=r"batch.support_x has shape \(1, 5, 1, 14, 14\), the captured step "
                                         r"\(2, 5, 1, 14, 14\)"):
        replay.load(sampler.batch([0]), 1.0, 1.0)
    low = FitConfig(**{**impl_cfg.to_dict(), "low_memory": True})
    with pytest.raises(ValueError, match="one task at a time"):
        cuda_graph.GraphedGradients(meta, low, batch)
    monkeypatch.setenv("BAYESNAS_VALIDATE", "1")
    with pytest.raises(ValueError, match="BAYESNAS_VALIDATE=1"):
        cuda_graph.GraphedGradients(meta, impl_cfg, batch)


def test_a_failed_capture_is_a_section_of_the_json_not_an_exception(tiny):
    cfg, data, sampler = tiny
    args = argparse.Namespace(warmup=0, iterations=1)
    out = bench_fit.time_cuda_graph(args, cfg, data, sampler, torch.device("cpu"))
    assert out["ok"] is False and out["stage"] == "capture"
    # the message's first line and where it came from
    assert re.fullmatch(r"ValueError: a CUDA graph needs the meta-network on a CUDA device, not cpu "
                        r"\(benchmarks/cuda_graph\.py:\d+\)", out["error"]), out["error"]
    assert out["outside"] and "step_gradients" in out["captured"]


@pytest.mark.cuda
def test_on_a_gpu_the_replayed_step_matches_the_eager_one(small_omniglot, tmp_path, monkeypatch):
    monkeypatch.delenv("BAYESNAS_VALIDATE", raising=False)
    out = tmp_path / "graph.json"
    bench_fit.main(["--config", "default", "--data", small_omniglot, "--tasks", "2", "--inner-steps", "1",
                    "--iterations", "2", "--warmup", "1", "--impls", "ours", "--memory-impls", "", "--slope-steps", "",
                    "--no-maml", "--no-flops", "--device", "cuda", "--cuda-graph", "--json", str(out)])
    result = json.loads(out.read_text())
    graph = result["cuda_graph"]
    assert graph["ok"], graph
    assert graph["hazards_in_warmup"] == {} and graph["seconds_per_iteration"]["graph"] > 0
    check = graph["check"]
    difference = check["max_abs_difference_from_eager"]["graph"]
    assert difference["loss"] <= 1e-4 * max(1.0, abs(check["loss"]["eager"]))
    assert difference["gradient"] <= 1e-3 * check["largest_gradient"]

