"""The benchmark tooling: FLOP counts of grouped convolutions and the bench command's JSON."""
import json

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from benchmarks import bench_fit
from benchmarks.flops import count_flops


def test_grouped_convolution_gradients_cost_one_forward_each():
    x = torch.randn(5, 16, 14, 14, requires_grad=True)
    w = torch.randn(32, 1, 5, 5, requires_grad=True)   # depthwise, channel multiplier 2
    forward = 2 * 5 * 32 * 1 * 25 * 14 * 14
    assert count_flops(lambda: F.conv2d(x, w, padding=2, groups=16)) == forward
    assert count_flops(lambda: F.conv2d(x, w, padding=2, groups=16).sum().backward()) == 3 * forward
    x.grad = w.grad = None
    # only the weight gradient requested: one forward's worth
    x.requires_grad_(False)
    assert count_flops(lambda: F.conv2d(x, w, padding=2, groups=16).sum().backward()) == 2 * forward


def test_dense_convolutions_count_as_torch_does():
    x = torch.randn(3, 4, 9, 9, requires_grad=True)
    w = torch.randn(6, 4, 3, 3, requires_grad=True)

    def step():
        F.conv2d(x, w, stride=2, padding=1).sum().backward()

    with FlopCounterMode(display=False) as stock:
        step()
    assert count_flops(step) == stock.get_total_flops() > 0


def test_slope_is_the_least_squares_slope():
    assert abs(bench_fit.slope([1, 2, 4], [10.0, 12.0, 16.0]) - 2.0) < 1e-12
    assert abs(bench_fit.slope([1, 2, 3], [1.0, 3.0, 2.0]) - 0.5) < 1e-12


@pytest.mark.slow
def test_bench_command_writes_its_figures(tmp_path, capsys):
    out = tmp_path / "bench.json"
    bench_fit.main(["--config", "default", "--tasks", "1", "--inner-steps", "1", "--iterations", "1", "--warmup", "0",
                    "--impls", "ours,low_memory", "--memory-impls", "ours", "--slope-steps", "", "--no-maml",
                    "--json", str(out)])
    result = json.loads(out.read_text())
    assert result["threads"] == 1 and result["device"] == "cpu" and result["matmul_gflops"] > 0
    ours, low = result["impls"]["ours"], result["impls"]["low_memory"]
    assert ours["seconds_per_iteration"] > 0 and ours["flops_per_iteration"] > 1e8
    # recomputing the inner step costs FLOPs: one more forward and backward of it
    assert low["flops_per_iteration"] > ours["flops_per_iteration"]
    assert 0 < ours["fraction_of_matmul"] < 1
    assert ours["peak_memory_mb"] > ours["baseline_mb"] > 0


@pytest.mark.slow
def test_sweep_reports_tasks_per_second_and_memory_per_meta_batch_size(tmp_path):
    out = tmp_path / "sweep.json"
    bench_fit.main(["--config", "default", "--sweep-tasks", "1,2", "--inner-steps", "1", "--iterations", "1",
                    "--warmup", "0", "--impls", "ours", "--no-maml", "--json", str(out)])
    sweep = json.loads(out.read_text())["sweep"]
    assert [row["tasks"] for row in sweep] == [1, 2]
    for row in sweep:
        ours = row["impls"]["ours"]
        assert ours["tasks_per_second"] == row["tasks"] / ours["seconds_per_iteration"] > 0
        assert 0 < ours["fraction_of_matmul"] < 1 and ours["peak_memory_mb"] > ours["baseline_mb"] > 0
    # what users run: the shipped search config (first order) and plain FitConfig()
    assert bench_fit.CONFIGS["search"].image_size == 14 and bench_fit.CONFIGS["search"].first_order
    assert bench_fit.CONFIGS["defaults"] == bench_fit.FitConfig()


@pytest.mark.slow
def test_flops_extrapolated_from_one_task_equal_the_whole_iteration_count():
    import argparse

    from bayesnas.config import FitConfig
    from bayesnas.data import open_data
    from bayesnas.inference.model import task_share
    from bayesnas.training.loop import task_samplers
    from bayesnas.training.search import svi_step

    cfg = FitConfig(channels=1, cells=2, tasks=3, inner_steps=3, ways=3, queries=2, image_size=7)
    data = open_data(None)
    estimate = bench_fit.extrapolated_flops(argparse.Namespace(flops_from_steps="1,2", device="cpu"), cfg, data)
    sampler, _ = task_samplers(cfg, data, torch.device("cpu"))
    meta, opt, impl_cfg = bench_fit.build(cfg, "ours", 1, torch.device("cpu"))
    with task_share(3, 0, 3):
        whole = count_flops(lambda: svi_step(meta, opt, sampler.batch([0, 1, 2]), impl_cfg, 1))
    assert estimate["total"] == whole > 0


@pytest.mark.slow
def test_compare_script_budget_per_setting_extends_runs_and_prints_markdown(tmp_path, capsys):
    import pytest

    from benchmarks import compare_omniglot as script

    assert script.parse_iterations("1200") == {"5w1s": 1200, "5w5s": 1200, "20w1s": 1200}
    assert script.parse_iterations("5w1s=4, 20w1s=6") == {"5w1s": 4, "20w1s": 6}
    for bad in ("many", "5w1s=x", "7w1s=3"):
        with pytest.raises(Exception, match="expected"):
            script.parse_iterations(bad)
    tiny = ["--settings", "5w1s", "--no-match-params", "--random-cells", "1", "--eval-tasks", "3", "--channels", "2",
            "--layers", "1",
            "--val-every", "2", "--val-tasks", "2", "--eval-inner-steps", "1", "--tasks", "1",
            "--out", str(tmp_path / "runs"), "--json", str(tmp_path / "report.json")]
    first = script.main(script.parse_args(tiny + ["--iterations", "5w1s=4,20w1s=1"]))
    rows = first["settings"][0]["result"]["rows"]
    assert [r["name"] for r in rows] == ["darts_v2", "conv4", "random-1"]
    assert first["settings"][0]["plateau"]["still_learning"] == ["darts_v2", "conv4", "random-1"]  # too short to tell
    # a larger budget on the same folder continues every run to it
    second = script.main(script.parse_args(tiny + ["--iterations", "6"]))
    assert all(r["val_curves"]["0"][-1][0] == 6 and len(r["val_curves"]["0"]) == 3
               for r in second["settings"][0]["result"]["rows"])
    capsys.readouterr()
    script.print_tables(tmp_path / "report.json")
    table = capsys.readouterr().out
    assert "**5-way 1-shot**, 6 iterations x 1 tasks" in table and "| conv4 | " in table and "| reference |" in table
    assert "| 6 |" in table  # each row's budget
    # the summary above: one column per setting, the random median (one random cell: its own accuracy)
    random_1 = second["settings"][0]["result"]["rows"][2]["accuracy"]
    assert table.startswith("| architecture | 5-way 1-shot |")
    assert f"| *random-cell median* | *{100 * random_1:.2f}%* |" in table
    assert "| searched cells above the median | 0 of 0 |" in table
    with pytest.raises(SystemExit, match="expected a report"):
        script.print_tables(tmp_path / "runs")
    # a figure per setting beside the report, redrawn from it alike
    figure = tmp_path / "report_5w1s.png"
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    figure.unlink()
    assert script.write_figures(str(tmp_path / "report.json")) == [str(figure)] and figure.stat().st_size > 10_000
    # until the plateau: curves this short cannot show one, so every run goes on to the cap, 2 at a time
    third = script.main(script.parse_args(tiny + ["--iterations", "6", "--max-iterations", "5w1s=10",
                                                  "--extend-by", "2"]))
    rows = third["settings"][0]["result"]["rows"]
    assert [r["iterations"] for r in rows] == [[10]] * 3 and all(r["val_curves"]["0"][-1][0] == 10 for r in rows)
    capsys.readouterr()
    script.print_tables(tmp_path / "report.json")
    assert "6 iterations, +2 at a time while val rise > 0.02 (at most 10) x 1 tasks" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        script.parse_args(tiny + ["--iterations", "6", "--max-iterations", "4"])
    assert "--max-iterations: below --iterations for 5w1s" in capsys.readouterr().err
