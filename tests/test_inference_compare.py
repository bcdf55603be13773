"""``compare``'s statistics: CIs over test tasks after averaging seeds per task, paired differences."""
import importlib
import json
import math
import os
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from bayesnas.errors import ConfigError
from bayesnas.inference.compare import compare, format_compare_table, over_tasks, paired_difference
from bayesnas.inference.maml import RetrainConfig

compare_module = importlib.import_module("bayesnas.inference.compare")  # the package exports compare(), the function

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
    accuracies = {"darts_v2": SEEDS_A, "conv4": SEEDS_B}
    trained_configs = []

    def fake_train(arch, cfg, path, progress, tensorboard, command):
        trained_configs.append(cfg)
        return SimpleNamespace(rows=[{"val_acc": 0.5}], train_seconds=1.0, net=torch.nn.Linear(2, 2))

    def fake_evaluate(path, tasks, inner_steps, seed, json_out, progress):
        label, seed = os.path.basename(path).rsplit("-seed", 1)
        accs = accuracies[label][int(seed)]
        return SimpleNamespace(accuracies=list(accs), accuracy=float(np.mean(accs)), ci95=0.0, seconds=0.5)

    monkeypatch.setattr(compare_module, "_train", fake_train)
    monkeypatch.setattr(compare_module, "evaluate", fake_evaluate)
    monkeypatch.setattr(compare_module, "write_run_card", lambda path: None)  # no real run folder
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
