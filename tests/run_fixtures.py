"""Runs for tests: one real tiny fit run made once per test session, and stand-ins for the
retraining and evaluation that ``compare`` orders (so its bookkeeping is tested in seconds)."""
import importlib
import os
from types import SimpleNamespace

import numpy as np

from bayesnas.config import FitConfig
from bayesnas.training import fit
from bayesnas.training.retrain import build_retrain_network
from bayesnas.training.rundir import RunDirectory

plateau_module = importlib.import_module("bayesnas.analysis.plateau")  # where compare trains a run
jobs_module = importlib.import_module("bayesnas.analysis.jobs")  # where compare evaluates a run, writes its card

ITERATIONS = 4
# as small as a real run gets (fit is the slow part of these tests): 2-way, 1 task per
# iteration, 1 inner step, C=2
TINY = dict(iterations=ITERATIONS, channels=2, cells=3, tasks=1, ways=2, shots=1, queries=2, inner_steps=1,
            val_every=2, checkpoint_every=2, val_tasks=2, val_samples=2, log_every=1, threads=1)
_RUNS = {}


def tiny_run(tmp_path_factory):
    """The folder of one real fit run, made once per test session (the Run API's and inspect's tests share it)."""
    if "tiny" not in _RUNS:
        out = tmp_path_factory.mktemp("runs") / "tiny"
        fit(FitConfig(**TINY), out=str(out), progress=False)
        _RUNS["tiny"] = str(out)
    return _RUNS["tiny"]


def fake_runs(monkeypatch, accuracies):
    """Replace compare's training and evaluation: each run writes a metrics.csv whose validation
    accuracy depends on its seed, and scores ``accuracies[label][seed]``. Returns the trained configs."""
    trained_configs = []

    def fake_train(arch, cfg, path, progress, tensorboard, command):
        trained_configs.append(cfg)
        rows = [{"iteration": 1, "loss": 1.5}, {"iteration": 2, "loss": 1.25, "val_acc": 0.25 + cfg.seed / 8},
                {"iteration": 3, "loss": 1.0}, {"iteration": 4, "loss": 0.75, "val_acc": 0.5 + cfg.seed / 8}]
        RunDirectory.create(path, cfg.to_dict()).write_metrics(rows)
        net = build_retrain_network(cfg, 1)
        return SimpleNamespace(rows=rows, train_seconds=1.0, net=net)

    def fake_evaluate(path, tasks, inner_steps, seed, json_out, progress):
        label, seed = os.path.basename(path).rsplit("-seed", 1)
        accs = accuracies[label][int(seed)]
        return SimpleNamespace(accuracies=list(accs), accuracy=float(np.mean(accs)), ci95=0.0, seconds=0.5)

    monkeypatch.setattr(plateau_module, "_train", fake_train)
    monkeypatch.setattr(jobs_module, "evaluate", fake_evaluate)
    monkeypatch.setattr(jobs_module, "write_run_card", lambda path: None)  # no real run folder
    return trained_configs
