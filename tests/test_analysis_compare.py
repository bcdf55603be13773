"""``compare``'s statistics: CIs over test tasks after averaging seeds per task, paired differences."""
import importlib
import json
import math
import os
from types import SimpleNamespace

import numpy as np
import pytest

from bayesnas.analysis.compare import (
    architectures,
    compare,
    format_compare_table,
    matched_channels,
    over_tasks,
    paired_difference,
    row_widths,
    validation_rise,
)
from bayesnas.config import RetrainConfig
from bayesnas.errors import ConfigError
from bayesnas.fileio import write_json
from bayesnas.models import count_parameters, random_genotype
from bayesnas.models.genotypes import arch_config
from bayesnas.training.retrain import build_retrain_network
from bayesnas.training.rundir import RunDirectory
from tests.run_fixtures import fake_runs

compare_module = importlib.import_module("bayesnas.analysis.compare")  # the package exports compare(), the function
plateau_module = importlib.import_module("bayesnas.analysis.plateau")  # where a run is trained
jobs_module = importlib.import_module("bayesnas.analysis.jobs")  # where a run is evaluated and its card written

# 2 seeds x 4 tasks. Per task the seeds average to [0.3, 0.3, 0.7, 0.7]: sample std
# sqrt(4 * 0.2^2 / 3) = 0.2309401, CI 1.96 * 0.2309401 / sqrt(4) = 0.2263213. Pooling the
# 8 values as independent gives std sqrt(0.4 / 7) = 0.2390457 and CI 1.96 * 0.2390457 /
# sqrt(8) = 0.1656502: narrower, with no more information than 4 tasks hold.
SEEDS_A = [[0.2, 0.4, 0.6, 0.8], [0.4, 0.2, 0.8, 0.6]]
# a second architecture on the same tasks: per task [0.2, 0.3, 0.5, 0.6]
SEEDS_B = [[0.1, 0.3, 0.4, 0.7], [0.3, 0.3, 0.6, 0.5]]


def test_interval_is_over_tasks_of_the_seed_means():
    mean, ci, per_task = over_tasks(SEEDS_A)
    assert per_task.tolist() == pytest.approx([0.3, 0.3, 0.7, 0.7])
    assert mean == pytest.approx(0.5)
    assert ci == pytest.approx(1.96 * math.sqrt(4 * 0.2 ** 2 / 3) / 2, abs=1e-12)   # 0.2263213
    pooled = 1.96 * np.std(np.ravel(SEEDS_A), ddof=1) / math.sqrt(8)
    assert pooled == pytest.approx(0.1656502, abs=1e-7) and ci > pooled + 0.05
    # one seed: the plain interval over tasks
    assert over_tasks(SEEDS_A[0])[:2] == pytest.approx((0.5, 1.96 * np.std(SEEDS_A[0], ddof=1) / 2))
    with pytest.raises(ConfigError, match="seeds, tasks"):
        over_tasks(np.zeros((2, 2, 2)))


def test_paired_difference_is_per_task_on_seed_means():
    diff, ci = paired_difference(SEEDS_A, SEEDS_B)
    # per-task differences [0.1, 0.0, 0.2, 0.1]: mean 0.1, sample std sqrt(0.02 / 3)
    assert diff == pytest.approx(0.1)
    assert ci == pytest.approx(1.96 * math.sqrt(0.02 / 3) / 2, abs=1e-12)
    # any numbers of seeds on each side, as long as the tasks are the same
    assert paired_difference(SEEDS_A, [SEEDS_B[0]])[0] == pytest.approx(np.mean(SEEDS_A, 0).mean() - 0.375)
    with pytest.raises(ConfigError, match="same test tasks"):
        paired_difference(SEEDS_A, [[0.5, 0.5]])


def test_compare_with_two_seeds_reports_intervals_over_tasks(tmp_path, monkeypatch):
    """The whole command with its training and evaluation replaced by known per-task accuracies."""
    trained_configs = fake_runs(monkeypatch, {"darts_v2": SEEDS_A, "conv4": SEEDS_B})
    result = compare(random_cells=0, baselines=("darts_v2", "conv4"), config=RetrainConfig(), seeds=[0, 1],
                     eval_tasks=4, out=tmp_path / "cmp", progress=False)
    darts, conv4 = result.rows
    assert (darts.accuracy, darts.ci95) == pytest.approx((0.5, 0.2263213), abs=1e-7)
    assert darts.accuracies == pytest.approx([0.3, 0.3, 0.7, 0.7])
    assert (conv4.accuracy, conv4.ci95) == pytest.approx(over_tasks(SEEDS_B)[:2])
    assert result.reference == "darts_v2" and (darts.difference, darts.difference_ci95) == (0.0, 0.0)
    assert (conv4.difference, conv4.difference_ci95) == pytest.approx(paired_difference(SEEDS_B, SEEDS_A))
    # rotations are resolved once (embedded Omniglot: on), so every run and a rerun agree
    assert {c.rotations for c in trained_configs} == {True} and result.config["rotations"] is True
    saved = json.load(open(tmp_path / "cmp" / "compare.json"))
    assert saved["rows"][0]["ci95"] == pytest.approx(0.2263213, abs=1e-7) and saved["warnings"] == []
    table = format_compare_table(result)
    assert "vs darts_v2 (paired)" in table and "-10.00% ±" in table and "averaged over the 2 seeds" in table
    # the names: name, paired_difference against the first row, the curves of each seed's metrics.csv
    assert saved["eval_tasks"] == 4 and [r["name"] for r in saved["rows"]] == ["darts_v2", "conv4"]
    assert saved["rows"][1]["paired_difference"]["mean"] == pytest.approx(-0.1)
    assert saved["rows"][1]["paired_difference"]["ci95"] == pytest.approx(conv4.difference_ci95)
    assert saved["rows"][1]["paired_difference"]["against"] == "darts_v2"
    assert saved["rows"][0]["paired_difference"] == {"mean": 0.0, "ci95": 0.0, "against": "darts_v2"}
    assert saved["rows"][1]["val_curves"] == {"0": [[2, 0.25], [4, 0.5]], "1": [[2, 0.375], [4, 0.625]]}
    # curves 2 iterations long cannot say whether they levelled off
    assert [r["val_rise"] for r in saved["rows"]] == [None, None] and "still learning" not in table
    # with windows that fit: per seed (0.5 - 0.25) and (0.625 - 0.375), averaged
    assert validation_rise(saved["rows"][0]["val_curves"], window=1, lag=2) == pytest.approx(0.25)


def test_row_kinds_come_from_where_a_row_came_from_not_its_label(tmp_path, monkeypatch):
    from bayesnas.models import named_genotype, save_genotype
    from bayesnas.viz.compare import random_median, row_kind

    mine = tmp_path / "random-x.json"  # a user's searched cell that happens to be named like a random one
    save_genotype(named_genotype("darts_v2"), mine)
    fake_runs(monkeypatch, {"random-x": [[0.9, 0.9]], "conv4": [[0.5, 0.5]], "random-1": [[0.3, 0.3]]})
    result = compare(genotypes=[str(mine)], random_cells=1, baselines=("conv4",), config=RetrainConfig(),
                     seeds=[0], eval_tasks=2, out=tmp_path / "cmp", progress=False, match_params=False)
    assert [(r.label, r.kind) for r in result.rows] == [("random-x", "searched"), ("conv4", "baseline"),
                                                        ("random-1", "random")]
    saved = json.load(open(tmp_path / "cmp" / "compare.json"))
    assert [row_kind(r) for r in saved["rows"]] == ["searched", "baseline", "random"]
    assert random_median(saved["rows"]) == pytest.approx(0.3)  # the user's cell is not a random cell
    for row in saved["rows"]:  # a comparison written before rows had a kind: read by the labels
        del row["kind"]
    assert [row_kind(r) for r in saved["rows"]] == ["random", "baseline", "random"]


def test_validation_rise_compares_the_last_window_with_one_lag_earlier():
    curve = [[it, v] for it, v in zip(range(50, 1201, 50), [0.1 * min(i, 8) for i in range(1, 25)], strict=True)]
    # rises to 0.8 at iteration 400, flat after: over 1100-1200 vs 800-900 nothing moved
    assert validation_rise(curve) == pytest.approx(0.0, abs=1e-12)
    # stopped at 500: (0.8 + 0.8) / 2 over (400, 500] against (0.3 + 0.4) / 2 over (100, 200]
    assert validation_rise(curve[:10]) == pytest.approx(0.8 - 0.35)
    # window and lag in iterations; the two seeds' rises are averaged
    assert validation_rise({"0": curve[:10], "1": curve}, window=100, lag=300) == pytest.approx((0.45 + 0.0) / 2)
    assert validation_rise(curve[:4]) is None  # 200 iterations: no window 300 before the last
    assert validation_rise([]) is None and validation_rise({"0": []}) is None


DARTS_AT_16 = 29029  # DARTS_V2, 16 channels, 3 cells, 1 x 28 x 28 input, 5 ways (RetrainConfig's docstring)


@pytest.mark.parametrize("arch", ["conv4", "darts_v2", "random"])
@pytest.mark.parametrize("target", [DARTS_AT_16, 60000])
def test_matched_width_gives_a_count_within_ten_percent_of_the_target(arch, target):
    arch = arch_config(random_genotype(3)) if arch == "random" else arch
    cfg = RetrainConfig(layers=3)

    def counted(channels):  # a real network on the CPU, counted independently of the search
        return count_parameters(build_retrain_network(RetrainConfig(arch=arch, layers=3, channels=channels), 1),
                                trainable_only=True)

    channels, parameters = matched_channels(arch, target, cfg)
    assert parameters == counted(channels)
    assert abs(parameters - target) <= 0.1 * target
    # the nearest width: one filter more or less is farther from the target
    assert abs(counted(channels + 1) - target) >= abs(parameters - target)
    assert channels == 1 or abs(counted(channels - 1) - target) >= abs(parameters - target)


def test_the_default_target_is_the_largest_row_and_widens_the_others():
    archs = architectures(random_cells=2, random_seed=1)
    cfg = RetrainConfig(layers=2, channels=10)
    at_10 = [count_parameters(build_retrain_network(RetrainConfig(arch=a, layers=2, channels=10), 1), True)
             for _, a in archs]
    target, widths = row_widths(archs, cfg)
    assert target == max(at_10)
    for (channels, parameters), own in zip(widths, at_10, strict=True):
        assert channels >= 10 and abs(parameters - target) <= 0.1 * target
        assert channels > 10 or own == target or abs(own - target) <= 0.1 * target
    assert max(c for c, _ in widths) > 10  # the lighter rows were widened
    # matching off: every row at the configured width, with its own count
    assert row_widths(archs, cfg, match_params=False) == (None, [(10, n) for n in at_10])
    with pytest.raises(ConfigError, match="needs matching on"):
        row_widths(archs, cfg, match_params=False, param_target=5000)


def test_a_target_no_width_meets_is_one_error_naming_the_architecture():
    with pytest.raises(ConfigError, match=r"^conv4: no width gives 10 trainable parameters ±10%; nearest channels "
                                          r"1: 54 \(the narrowest\)"):
        matched_channels("conv4", 10, RetrainConfig())
    # a heavy random cell at 3 cells jumps from 25,350 (5 channels) to 33,821 (6): DARTS_V2's 29,029 falls between
    archs = architectures(random_cells=1, baselines=("darts_v2",))
    with pytest.raises(ConfigError) as caught:
        row_widths(archs, RetrainConfig(layers=3), param_target=DARTS_AT_16)
    message = str(caught.value)
    assert message.startswith("random-1: no width gives 29,029 trainable parameters ±10%")
    assert "channels 5: 25,350, channels 6: 33,821" in message and "--param-target" in message
    with pytest.raises(ConfigError, match="widest tried"):
        matched_channels("conv4", 10 ** 12, RetrainConfig())


def test_no_match_params_trains_every_row_at_the_configured_channels(tmp_path, monkeypatch):
    trained = fake_runs(monkeypatch, {"darts_v2": SEEDS_A[:1], "conv4": SEEDS_B[:1]})
    off = compare(random_cells=0, config=RetrainConfig(), eval_tasks=4, out=tmp_path / "off", progress=False,
                  match_params=False)
    assert [c.channels for c in trained] == [16, 16] and [r.channels for r in off.rows] == [16, 16]
    assert [r.parameters for r in off.rows] == [DARTS_AT_16, 7269] and off.param_target is None
    assert "equal channels 16" in format_compare_table(off)
    trained.clear()
    on = compare(random_cells=0, config=RetrainConfig(), eval_tasks=4, out=tmp_path / "on", progress=False)
    assert on.param_target == DARTS_AT_16 and [r.channels for r in on.rows] == [c.channels for c in trained]
    assert on.rows[0].channels == 16 and on.rows[1].channels > 16
    assert abs(on.rows[1].parameters - DARTS_AT_16) <= 0.1 * DARTS_AT_16
    assert json.load(open(tmp_path / "on" / "conv4-seed0" / "config.json"))["channels"] == on.rows[1].channels
    assert "parameters matched to 29,029 ±10%" in format_compare_table(on)


@pytest.mark.slow
def test_runs_in_worker_processes_give_the_same_table(tmp_path, monkeypatch):
    """Two spawned workers (real, tiny runs) against one process: the same accuracies, curves, widths."""
    cfg = RetrainConfig(iterations=2, tasks=1, channels=2, layers=1, val_every=2, val_tasks=2, checkpoint_every=2,
                        eval_inner_steps=1, threads=1)
    kwargs = dict(random_cells=1, baselines=("conv4",), config=cfg, eval_tasks=3, progress=False)
    here = compare(out=tmp_path / "here", **kwargs)
    spread = compare(out=tmp_path / "spread", workers=2, **kwargs)
    assert [r.label for r in spread.rows] == [r.label for r in here.rows] == ["conv4", "random-1"]
    for a, b in zip(here.rows, spread.rows, strict=True):
        assert (a.accuracies, a.val_curves, a.channels, a.parameters) == (b.accuracies, b.val_curves, b.channels,
                                                                           b.parameters)
    with pytest.raises(ConfigError, match="workers=0"):
        compare(out=tmp_path / "none", workers=0, **kwargs)
    # the finished runs are reused (only evaluated again), and the work did leave this process
    jobs = [compare_module.Job(r.label, r.arch, 0, RetrainConfig(**{**spread.config, "arch": r.arch, "seed": 0,
                                                                     "channels": r.channels}),
                                r.run_dirs[0], 3, None, 0, False, False, None) for r in spread.rows]
    done = list(compare_module.run_jobs(jobs, 2, 1))
    assert os.getpid() not in {d["process"] for d in done}
    assert sorted(d["accuracies"] for d in done) == sorted(r.accuracies for r in here.rows)
    # here, run again: the finished runs and their evaluations are reused, nothing is evaluated again
    def refuse(*args, **kwargs):
        raise AssertionError("a finished, evaluated run was evaluated again")

    monkeypatch.setattr(jobs_module, "evaluate", refuse)
    rerun = compare(out=tmp_path / "here", **kwargs)
    assert [r.accuracies for r in rerun.rows] == [r.accuracies for r in here.rows]


def test_comparison_figure_marks_kinds_and_the_random_median():
    from bayesnas.viz.compare import KIND_COLOURS, mean_curve, plot_comparison, row_kind

    rows = [{"label": "fit-a", "arch": {"normal": []}, "accuracy": 0.8, "ci95": 0.01,
             "val_curves": {"0": [[50, 0.5], [100, 0.7]], "1": [[50, 0.3], [100, 0.5], [150, 0.6]]}},
            {"label": "conv4", "arch": "conv4", "accuracy": 0.9, "ci95": 0.01,
             "val_curves": {"0": [[50, 0.2], [100, 0.6]]}}]
    rows += [{"label": f"random-{i}", "arch": {"normal": []}, "accuracy": a, "ci95": 0.02, "val_curves": {}}
             for i, a in enumerate([0.7, 0.85, 0.75], 1)]
    assert [row_kind(r) for r in rows] == ["searched", "baseline", "random", "random", "random"]
    iterations, acc = mean_curve(rows[0]["val_curves"])  # only the iterations both seeds reached
    assert iterations.tolist() == [50, 100] and acc == pytest.approx([0.4, 0.6])
    fig = plot_comparison({"rows": rows, "eval_tasks": 600, "config": {"ways": 5, "shots": 1, "iterations": 150}})
    left, right = fig.axes
    # the rows top to bottom in the table's order
    ticks = {t.get_text(): t.get_position()[1] for t in left.get_yticklabels()}
    assert sorted(ticks, key=ticks.get, reverse=True) == [r["label"] for r in rows]
    median = [line for line in left.get_lines() if line.get_linestyle() == "--"]
    assert len(median) == 1 and median[0].get_xdata()[0] == pytest.approx(75.0)
    assert "5-way 1-shot, 150 iterations" in fig._suptitle.get_text()
    assert right.get_lines()[0].get_color() == KIND_COLOURS["searched"]
    # both curves end at 0.6: their names are pushed apart, not printed over each other
    names = {t.get_text(): t.get_position()[1] for t in right.texts}
    low, high = right.get_ylim()
    assert set(names) == {"fit-a", "conv4"} and abs(names["fit-a"] - names["conv4"]) >= 0.034 * (high - low)


def plateau_fake(monkeypatch, until=800, every=50):
    """Replace compare's training by a run whose validation accuracy rises linearly to 0.8 at
    iteration ``until`` and stays there; records each budget it was asked to train to."""
    budgets = []

    def fake_train(arch, cfg, path, progress, tensorboard, command):
        budgets.append(cfg.iterations)
        rows = [{"iteration": it, "loss": 1.0, "val_acc": 0.8 * min(it, until) / until}
                for it in range(every, cfg.iterations + 1, every)]
        run = RunDirectory(path) if os.path.isdir(path) else RunDirectory.create(path, cfg.to_dict())
        write_json(run.file("config.json"), cfg.to_dict())  # a continued run records its raised budget
        run.write_metrics(rows)
        open(run.file("checkpoint_last.pt"), "wb").close()
        return SimpleNamespace(rows=rows, train_seconds=1.0, net=build_retrain_network(cfg, 1))

    monkeypatch.setattr(plateau_module, "_train", fake_train)
    return budgets


def test_training_until_the_plateau_extends_a_rising_run_and_stops_when_flat(tmp_path, monkeypatch):
    from bayesnas.analysis.compare import train_to_plateau

    budgets = plateau_fake(monkeypatch)
    cfg, path = RetrainConfig(iterations=400), str(tmp_path / "run")
    # rise at 400: mean of val at (300, 400] minus (0, 100] = 0.375 - 0.075; at 1000: 0.8 - 0.675;
    # at 1200: 0.8 - 0.8 = 0 <= 0.02, so it stops there
    _, got = train_to_plateau("conv4", cfg, path, max_iterations=2000, extend_by=200)
    assert budgets == [400, 600, 800, 1000, 1200] and got == 1200
    assert validation_rise(compare_module.val_curve(path)) == pytest.approx(0.0, abs=1e-12)
    # called again on the same folder (a rerun): it starts from the budget the run reached
    budgets.clear()
    assert train_to_plateau("conv4", cfg, path, max_iterations=2000, extend_by=200)[1] == 1200 and budgets == [1200]
    # the cap wins over a rise still above the threshold
    budgets.clear()
    assert train_to_plateau("conv4", cfg, str(tmp_path / "capped"), max_iterations=700, extend_by=200)[1] == 700
    assert budgets == [400, 600, 700]
    # no cap: the configured budget only
    budgets.clear()
    assert train_to_plateau("conv4", cfg, str(tmp_path / "fixed"), max_iterations=None)[1] == 400
    assert budgets == [400]


def test_compare_until_the_plateau_records_each_rows_budget(tmp_path, monkeypatch):
    budgets = plateau_fake(monkeypatch)
    monkeypatch.setattr(jobs_module, "evaluate", lambda path, tasks, inner_steps, seed, json_out, progress:
                        SimpleNamespace(accuracies=[0.5, 0.7], accuracy=0.6, ci95=0.1, seconds=0.1))
    monkeypatch.setattr(jobs_module, "write_run_card", lambda path: None)
    result = compare(random_cells=0, baselines=("conv4",), config=RetrainConfig(iterations=400), eval_tasks=2,
                     out=tmp_path / "cmp", progress=False, match_params=False, max_iterations=900, extend_by=300)
    assert budgets == [400, 700, 900] and result.rows[0].iterations == [900]
    assert (result.max_iterations, result.extend_by) == (900, 300)
    table = format_compare_table(result)
    assert "400 iterations, +300 at a time while val rise > 0.02 (at most 900)" in table
    header, row = table.splitlines()[1:3]
    at = header.index("iters")
    assert row[at:at + 5] == "  900"
    saved = json.load(open(tmp_path / "cmp" / "compare.json"))
    assert saved["rows"][0]["iterations"] == [900] and saved["max_iterations"] == 900
    for bad, match in (({"max_iterations": 300}, "at least the configured iterations"),
                       ({"max_iterations": 900, "extend_by": 0}, "extend_by=0")):
        with pytest.raises(ConfigError, match=match):
            compare(random_cells=0, baselines=("conv4",), config=RetrainConfig(iterations=400), eval_tasks=2,
                    out=tmp_path / "bad", progress=False, match_params=False, **bad)
    assert not (tmp_path / "bad").exists()
