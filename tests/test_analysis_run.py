"""``load_run`` and the Run object, on a real (tiny) fit run."""
import os
import shutil
import sys

import pytest
import torch

import bayesnas
from bayesnas.analysis.derive import derive_cell
from bayesnas.analysis.posterior import AdaptedPosterior, EdgePosterior, PosteriorHistory
from bayesnas.errors import RunError
from bayesnas.training.search import load_fit
from tests.run_fixtures import ITERATIONS, tiny_run


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return tiny_run(tmp_path_factory)


@pytest.fixture(scope="module")
def run(run_dir):
    return bayesnas.load_run(run_dir)


def broken_copy(run_dir, tmp_path, name="broken"):
    copy = tmp_path / name
    shutil.copytree(run_dir, copy)
    return copy


def test_config_metrics_and_checkpoints(run, run_dir):
    assert run.config.iterations == ITERATIONS and run.config.channels == 2
    assert run.iteration == ITERATIONS == run.checkpoint_iteration("last")
    assert set(run.checkpoints) == {"last", "best"}
    assert run.checkpoints["last"] == os.path.join(run_dir, "checkpoint_last.pt")
    metrics = run.metrics
    assert [int(r["iteration"]) for r in metrics] == list(range(1, ITERATIONS + 1))
    assert [r["val_acc"] is not None for r in metrics] == [False, True, False, True]
    assert run.temperature() == pytest.approx(run.config.tau_end)
    assert "iteration 4/4" in repr(run)


def test_metrics_frame_with_and_without_pandas(run, monkeypatch):
    pandas = pytest.importorskip("pandas")
    frame = run.metrics_frame()
    assert isinstance(frame, pandas.DataFrame)
    assert list(frame.index) == [1, 2, 3, 4] and frame["val_acc"].notna().sum() == 2
    monkeypatch.setitem(sys.modules, "pandas", None)  # as if pandas were not installed
    with pytest.raises(ImportError, match="pip install pandas"):
        run.metrics_frame()


def test_edge_posterior_is_the_checkpoint_alpha_and_derives_like_derive_cell(run, run_dir, tmp_path):
    post = run.edge_posterior()
    _, meta, _ = load_fit(run_dir)
    torch.testing.assert_close(post.probs.normal, meta.alpha_normal.detach().softmax(-1))
    torch.testing.assert_close(post.probs.reduce.sum(-1), torch.ones(14))
    cell = derive_cell(run_dir, out=tmp_path / "genotype.json", plot=False)
    assert post.derive() == cell.genotype
    assert post.tau == pytest.approx(run.config.tau_end)
    assert isinstance(run.edge_posterior("best"), EdgePosterior)


def test_task_posterior_adapts_and_predicts(run, run_dir, tmp_path):
    task = run.task_sampler().task(0)
    post = run.adapt(task, samples=3, seed=0)
    assert isinstance(post, AdaptedPosterior) and post.steps == run.config.inner_steps
    assert not torch.equal(post.probs.normal, run.edge_posterior().probs.normal)
    torch.testing.assert_close(post.probs.normal.sum(-1), torch.ones(14))
    pred = post.predict(task.query_x)
    ways, n_query = run.config.ways, run.config.ways * run.config.queries
    assert pred.probs.shape == (n_query, ways) and pred.sample_probs.shape == (3, n_query, ways)
    again = run.task_posterior(task.support_x, task.support_y, samples=3, seed=0)
    torch.testing.assert_close(again.probs.reduce, post.probs.reduce)
    # the task-specific cell is what `derive-cell --task-seed` gives for the same (validation) task and seed
    seeded = run.adapt(run.task_sampler("val", seed=5).task(0), seed=5)
    cell = derive_cell(run_dir, task_seed=5, out=tmp_path / "g.json", plot=False)
    assert seeded.derive() == cell.genotype
    with pytest.raises(bayesnas.errors.ConfigError, match=r"2 classes \(labels 0..1\)"):
        run.task_posterior(task.support_x, task.support_y + 1)


def test_posterior_history(run):
    hist = run.posterior_history()
    assert isinstance(hist, PosteriorHistory)
    assert hist.iteration.tolist() == list(range(ITERATIONS + 1))
    assert hist.probs.normal.shape == (ITERATIONS + 1, 14, 10)
    torch.testing.assert_close(hist.at(-1).probs.normal, run.edge_posterior().probs.normal)


def plain_ece(probs, labels, bins=15):
    """The 15-bin ECE by its definition, one bin at a time, in float64."""
    probs = probs.double()
    conf, pred = probs.max(-1)
    total = 0.0
    for b in range(bins):
        inside = (conf > b / bins) & (conf <= (b + 1) / bins)
        if inside.any():
            acc = (pred[inside] == labels[inside]).double().mean()
            total += inside.double().mean().item() * abs(acc - conf[inside].mean()).item()
    return total


def test_calibration_is_computed_from_the_predictions_it_made(run, monkeypatch):
    made = []
    real_predict = AdaptedPosterior.predict

    def spy(self, *args, **kwargs):
        made.append(real_predict(self, *args, **kwargs))
        return made[-1]

    monkeypatch.setattr(AdaptedPosterior, "predict", spy)
    cal = run.calibration(tasks=2, samples=3)
    assert cal.tasks == 2 and cal.points == 2 * run.config.ways * run.config.queries
    labels = torch.cat([run.task_sampler(seed=0).task(i).query_y for i in range(2)])
    assert len(made) == 2 and all(p.sample_probs.shape[0] == 3 for p in made)
    single = torch.cat([p.sample_probs[0] for p in made]).double()
    averaged = torch.cat([p.probs for p in made]).double()
    for probs, ece, acc, conf, nll in ((single, cal.ece_single, cal.acc_single, cal.conf_single, cal.nll_single),
                                       (averaged, cal.ece_averaged, cal.acc_averaged, cal.conf_averaged,
                                        cal.nll_averaged)):
        assert ece == pytest.approx(plain_ece(probs, labels), abs=1e-6)
        assert acc == pytest.approx((probs.argmax(-1) == labels).double().mean().item(), abs=1e-9)
        assert conf == pytest.approx(probs.max(-1).values.mean().item(), abs=1e-6)
        assert nll == pytest.approx(-probs[torch.arange(len(labels)), labels].log().mean().item(), abs=1e-5)
    one = run.calibration(tasks=2, samples=1)
    assert one.ece_single == one.ece_averaged and one.conf_single == one.conf_averaged


def test_calibration_adapts_and_predicts_from_independent_random_streams(run, monkeypatch):
    """Prediction sample 0 must not replay the noise of the guide's first step: the two
    must start from different generator states (a bug once: both were seeded alike)."""
    import importlib

    import bayesnas.analysis.posterior as posterior

    guide = importlib.import_module("bayesnas.inference.adapt")  # the module, not its function adapt

    states = {"adapt": [], "predict": []}
    real_adapt, real_predictive = guide.adapt, posterior.predictive

    def adapt_spy(*args, **kwargs):
        states["adapt"].append(torch.get_rng_state())
        return real_adapt(*args, **kwargs)

    def predictive_spy(*args, **kwargs):
        states["predict"].append(torch.get_rng_state())
        return real_predictive(*args, **kwargs)

    monkeypatch.setattr(guide, "adapt", adapt_spy)
    monkeypatch.setattr(posterior, "predictive", predictive_spy)
    first = run.calibration(tasks=2, samples=2, seed=4)
    assert len(states["adapt"]) == len(states["predict"]) == 2
    for adapting, predicting in zip(states["adapt"], states["predict"], strict=True):
        assert not torch.equal(adapting, predicting)
    assert not torch.equal(states["adapt"][0], states["adapt"][1])
    assert run.calibration(tasks=2, samples=2, seed=4) == first  # still deterministic for a seed
    assert torch.equal(states["adapt"][2], states["adapt"][0]) and torch.equal(states["predict"][3],
                                                                               states["predict"][1])


def test_missing_files_and_foreign_checkpoints_fail_clearly(run_dir, tmp_path):
    with pytest.raises(RunError, match="no such run folder"):
        bayesnas.load_run(tmp_path / "nowhere")
    for name, expected in (("config.json", "config.json: missing"),
                           ("checkpoint_last.pt", "checkpoint_last.pt: missing"),
                           ("metrics.csv", "metrics.csv: missing")):
        copy = broken_copy(run_dir, tmp_path, name)
        os.remove(copy / name)
        with pytest.raises(RunError, match=expected):
            bayesnas.load_run(copy)
    copy = broken_copy(run_dir, tmp_path, "history")
    os.remove(copy / "posterior_history.h5")
    with pytest.raises(RunError, match="posterior_history.h5: missing"):
        bayesnas.load_run(copy).posterior_history()
    # an older checkpoint format
    copy = broken_copy(run_dir, tmp_path, "old")
    state = torch.load(copy / "checkpoint_last.pt", weights_only=False)
    torch.save(dict(state, format=0), copy / "checkpoint_last.pt")
    with pytest.raises(RunError, match="checkpoint format 0"):
        bayesnas.load_run(copy)
    # a checkpoint of another command (no meta-network in it)
    copy = broken_copy(run_dir, tmp_path, "other")
    torch.save(dict(state, stateful={"net": {}}), copy / "checkpoint_last.pt")
    with pytest.raises(RunError, match="holds no fit meta-network"):
        bayesnas.load_run(copy)
    # a bare state dict from some other tool
    torch.save({"weight": torch.zeros(2)}, copy / "checkpoint_last.pt")
    with pytest.raises(RunError, match="checkpoint format None"):
        bayesnas.load_run(copy)
    # the config of another command
    copy = broken_copy(run_dir, tmp_path, "retrain")
    (copy / "config.json").write_text('{"genotype": "darts_v2", "iterations": 3}')
    with pytest.raises(RunError,
                       match="config.json: unknown setting.s. genotype; .*not usable as the config of a fit run"):
        bayesnas.load_run(copy)
