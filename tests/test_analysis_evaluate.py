"""Evaluation: the confidence interval on known samples, and a seeded, paired test protocol."""
import json
import math

import numpy as np
import pytest
import torch

from bayesnas.analysis.evaluate import evaluate, format_evaluation, mean_confidence_interval
from bayesnas.config import RetrainConfig
from bayesnas.data.protocol import TEST_SELECTION_WARNING
from bayesnas.errors import ConfigError, RunError
from bayesnas.training.retrain import retrain
from tests.data_fixtures import write_fewshot_file


def test_confidence_interval_of_a_known_sample():
    mean, ci = mean_confidence_interval([0.2, 0.4, 0.6, 0.8])
    # sample std = sqrt(0.2 / 3) = 0.2581989; 1.96 * 0.2581989 / sqrt(4) = 0.2530349
    assert mean == pytest.approx(0.5) and ci == pytest.approx(0.2530349, abs=1e-7)
    mean, ci = mean_confidence_interval(torch.tensor([1.0, 0.0] * 300))
    # 600 Bernoulli(1/2) outcomes: std = sqrt(600 / 599) / 2
    assert mean == 0.5 and ci == pytest.approx(1.96 * math.sqrt(600 / 599) / 2 / math.sqrt(600), rel=1e-12)
    assert mean_confidence_interval([0.7, 0.7, 0.7]) == (pytest.approx(0.7), pytest.approx(0.0, abs=1e-15))
    assert mean_confidence_interval([0.3]) == (0.3, 0.0)
    assert mean_confidence_interval([0.2, 0.4, 0.6, 0.8], z=2.576)[1] == pytest.approx(2.576 * 0.2581989 / 2, abs=1e-6)
    with pytest.raises(ValueError):
        mean_confidence_interval([])


def test_confidence_interval_covers_the_true_mean_95_percent_of_the_time():
    rng = np.random.default_rng(0)
    samples = rng.normal(0.7, 0.1, size=(4000, 200))
    covered = 0
    for sample in samples:
        mean, ci = mean_confidence_interval(sample)
        covered += abs(mean - 0.7) <= ci
    # t with 199 df: P(|t| < 1.96) = 0.9486; 4000 draws give a standard error of 0.0035
    assert 0.938 < covered / 4000 < 0.960


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("evaluate") / "c4"
    cfg = RetrainConfig(arch="conv4", channels=8, iterations=20, queries=5, val_every=10, val_tasks=10,
                        checkpoint_every=10, threads=1)
    retrain(None, cfg, out=out, progress=False)
    return out


@pytest.mark.slow
def test_evaluate_is_seeded_paired_and_writes_json(run, tmp_path):
    a = evaluate(run, tasks=40, json_out=tmp_path / "e.json")
    assert a.tasks == 40 and len(a.accuracies) == 40 and a.checkpoint == "best"
    assert a.accuracy == pytest.approx(np.mean(a.accuracies))
    assert a.ci95 == pytest.approx(1.96 * np.std(a.accuracies, ddof=1) / math.sqrt(40))
    assert a.inner_steps == 5 and (a.ways, a.shots, a.queries) == (5, 1, 5)
    # Conv-4 with 8 filters: 4 x (bias-free 3x3 conv + affine BN) + linear head on 8 features
    assert a.parameters == (9 * 8 + 16) + 3 * (9 * 64 + 16) + (8 * 5 + 5)
    saved = json.load(open(tmp_path / "e.json"))
    assert saved["accuracy"] == a.accuracy and saved["accuracies"] == a.accuracies
    # every per-task accuracy is a multiple of 1/25 (5-way, 5 queries per class)
    assert all(abs(25 * x - round(25 * x)) < 1e-9 for x in a.accuracies)
    b = evaluate(run, tasks=40)
    assert b.accuracies == a.accuracies
    c = evaluate(run, tasks=40, seed=1)
    assert c.accuracies != a.accuracies
    assert a.accuracy > 0.3  # chance is 0.2
    text = format_evaluation(a)
    assert "±" in text and f"{100 * a.accuracy:.2f}%" in text
    assert a.warnings == [] and saved["warnings"] == [] and "warning" not in text


def test_inner_steps_at_test_time_matter(run):
    none = evaluate(run, tasks=30, inner_steps=0)
    five = evaluate(run, tasks=30, inner_steps=5)
    assert none.inner_steps == 0
    # without adaptation the labels are arbitrary: about chance
    assert none.accuracy < 0.32 < five.accuracy


def test_evaluate_bad_input(run, tmp_path):
    with pytest.raises(RunError, match="no such run folder"):
        evaluate(tmp_path / "missing")
    with pytest.raises(ConfigError, match="tasks"):
        evaluate(run, tasks=0)


def test_a_run_that_selected_on_the_test_classes_is_evaluated_with_a_warning(tmp_path):
    path = write_fewshot_file(tmp_path / "noval.h5", "Omniglot (no validation classes)", {"train": 4, "test": 3},
                              side=16, channels=1)
    cfg = RetrainConfig(arch="conv4", data=path, select_on="test", channels=2, iterations=1, ways=2, queries=2,
                        inner_steps=1, val_every=1, val_tasks=1, checkpoint_every=1, threads=1)
    retrain(None, cfg, out=tmp_path / "run", progress=False)
    result = evaluate(tmp_path / "run", tasks=3, json_out=tmp_path / "e.json")
    assert result.warnings == [TEST_SELECTION_WARNING]
    assert json.load(open(tmp_path / "e.json"))["warnings"] == [TEST_SELECTION_WARNING]
    assert format_evaluation(result).splitlines()[-1] == f"warning: {TEST_SELECTION_WARNING}"


@pytest.mark.slow
def test_a_saved_evaluation_is_reused_only_while_tasks_and_checkpoint_are_unchanged(run, tmp_path):
    import shutil

    from bayesnas.analysis.evaluate import previous_evaluation
    from bayesnas.training.records import file_sha256

    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    saved = tmp_path / "e.json"
    assert previous_evaluation(saved, copy, tasks=12) is None  # nothing saved yet
    fresh = evaluate(copy, tasks=12, json_out=saved)
    again = previous_evaluation(saved, copy, tasks=12)
    assert again is not None and again.accuracies == fresh.accuracies and again.accuracy == fresh.accuracy
    assert again.inner_steps == 5 and len(again.checkpoint_sha256) == len(again.data_sha256) == 64
    # what the evaluation was of must match: tasks, seed, test-time steps, checkpoint, split
    assert previous_evaluation(saved, copy, tasks=13) is None
    assert previous_evaluation(saved, copy, tasks=12, seed=1) is None
    assert previous_evaluation(saved, copy, tasks=12, inner_steps=5) is not None  # the run's own 5
    assert previous_evaluation(saved, copy, tasks=12, inner_steps=4) is None
    assert previous_evaluation(saved, copy, tasks=12, which="last") is None
    assert previous_evaluation(saved, copy, tasks=12, split="val") is None
    # a file from before the hashes were recorded, or one that is not an evaluation, is evaluated again
    record = json.load(open(saved))
    json.dump({k: v for k, v in record.items() if not k.endswith("sha256")}, open(tmp_path / "old.json", "w"))
    assert previous_evaluation(tmp_path / "old.json", copy, tasks=12) is None
    (tmp_path / "bad.json").write_text("[1, 2")
    assert previous_evaluation(tmp_path / "bad.json", copy, tasks=12) is None
    # training further rewrites the last checkpoint (and the best one if validation improved): the saved
    # numbers of a rewritten checkpoint no longer describe it
    last = evaluate(copy, tasks=12, which="last", json_out=tmp_path / "last.json")
    assert previous_evaluation(tmp_path / "last.json", copy, tasks=12, which="last").accuracies == last.accuracies
    best_before = file_sha256(copy / "checkpoint_best.pt")
    retrain(None, RetrainConfig(**{**json.load(open(copy / "config.json")), "iterations": 30}), resume=copy,
            progress=False)
    assert previous_evaluation(tmp_path / "last.json", copy, tasks=12, which="last") is None
    best_rewritten = file_sha256(copy / "checkpoint_best.pt") != best_before
    assert (previous_evaluation(saved, copy, tasks=12) is None) == best_rewritten
