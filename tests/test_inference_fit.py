"""``fit`` end to end on the embedded data: run folder, resume, determinism, non-finite stop."""
import json
import os

import pytest
import torch

from bayesnas.config import FitConfig
from bayesnas.errors import ConfigError, NonFiniteLossError, RunError
from bayesnas.inference import RunDirectory, fit
from bayesnas.inference.svi import load_fit

TINY = dict(iterations=6, channels=2, cells=3, queries=2, inner_steps=1, val_every=3, checkpoint_every=2,
            val_tasks=2, val_samples=2, log_every=2, threads=1)


@pytest.fixture(autouse=True)
def small_data(small_omniglot):
    """Run every fit of this module on the 14x14 test subset (a few seconds, not minutes)."""
    TINY["data"] = small_omniglot
    yield


class Kill(Exception):
    pass


def test_fit_writes_a_complete_run_folder(tmp_path):
    result = fit(FitConfig(**TINY), out=tmp_path / "run", progress=False)
    run = RunDirectory(tmp_path / "run")
    names = sorted(os.listdir(run.path))
    assert names == ["checkpoint_best.pt", "checkpoint_last.pt", "config.json", "metrics.csv", "posterior_history.h5"]
    assert run.config()["iterations"] == 6
    rows = run.read_metrics()
    assert [r["iteration"] for r in rows] == [1, 2, 3, 4, 5, 6]
    assert rows[2]["val_acc"] is not None and rows[0]["val_acc"] is None
    assert all(r["kl_theta"] >= 0 for r in rows)
    history = run.read_history()
    assert list(history["iteration"]) == [0, 2, 4, 6]
    assert history["alpha_normal"].shape == (4, 14, 10)
    # alpha moved during training, and the history holds the final value
    final = result.meta.alpha_normal.detach().numpy()
    assert abs(history["alpha_normal"][-1] - final).max() < 1e-6
    assert abs(history["alpha_normal"][0] - final).max() > 1e-4
    assert run.load_checkpoint()["iteration"] == 6
    cfg, meta, _ = load_fit(run.path)
    assert torch.equal(meta.mu, result.meta.mu)


def test_fit_logs_search_diagnostics_in_metrics_and_history(tmp_path):
    """Every logged step's diagnostics, in metrics.csv and the history, are those of the
    history's alpha at that iteration: entropy and top-op probability over the 28 edges,
    the derived genotype, and whether it changed since the previous log."""
    import math

    from bayesnas.inference.posterior import EdgePosterior
    from bayesnas.models.genotypes import genotype_string

    fit(FitConfig(**dict(TINY, arch_lr=0.3)), out=tmp_path / "run", progress=False)
    run = RunDirectory(tmp_path / "run")
    history = run.read_history()
    rows = {int(r["iteration"]): r for r in run.read_metrics()}
    assert list(history["iteration"]) == [0, 2, 4, 6]
    assert [rows[i]["genotype"] is None for i in (1, 3, 5)] == [True] * 3  # logged every 2nd step only
    genotypes = []
    for k, iteration in enumerate(history["iteration"]):
        post = EdgePosterior(history["alpha_normal"][k], history["alpha_reduce"][k])
        entropy = torch.cat(post.entropy())
        top = torch.cat([p.max(-1).values for p in post.probs])
        expected = {"edge_entropy_mean": entropy.mean().item(), "edge_entropy_max": entropy.max().item(),
                    "top_prob_mean": top.mean().item(), "genotype": genotype_string(post.derive())}
        genotypes.append(expected["genotype"])
        assert entropy.numel() == 28 and 0 < expected["edge_entropy_mean"] <= math.log(10) + 1e-6
        for key, value in expected.items():
            want = value if key == "genotype" else pytest.approx(value, rel=1e-6)
            assert history[key][k] == want
            if iteration:
                assert rows[iteration][key] == want
    assert isinstance(rows[2]["genotype"], str) and isinstance(rows[2]["loss"], float)
    changed = [0] + [int(a != b) for a, b in zip(genotypes, genotypes[1:])]
    assert history["genotype_changed"].tolist() == changed
    assert [rows[i]["genotype_changed"] for i in (2, 4, 6)] == changed[1:]


def test_same_seed_same_result_and_resume_after_a_kill_matches(tmp_path):
    full = fit(FitConfig(**TINY), out=tmp_path / "full", progress=False)

    def kill_at_5(iteration, row):
        if iteration == 5:
            raise Kill()

    with pytest.raises(Kill):
        fit(FitConfig(**TINY), out=tmp_path / "killed", progress=False, callbacks=[kill_at_5])
    killed = RunDirectory(tmp_path / "killed")
    state = killed.load_checkpoint()
    assert state["iteration"] == 4  # the last complete checkpoint
    # as a checkpoint written before fit logged search diagnostics: resuming recomputes them
    for key in ("edge_entropy_mean", "edge_entropy_max", "top_prob_mean", "genotype", "genotype_changed"):
        del state["extra"]["history"][key]
    killed.save_checkpoint(state)
    resumed = fit(resume=tmp_path / "killed", progress=False)
    assert [r["loss"] for r in resumed.rows] == [r["loss"] for r in full.rows]
    assert [r.get("val_acc") for r in resumed.rows] == [r.get("val_acc") for r in full.rows]
    assert torch.equal(resumed.meta.mu, full.meta.mu)
    assert torch.equal(resumed.meta.alpha_reduce, full.meta.alpha_reduce)
    history = RunDirectory(tmp_path / "killed").read_history()
    history_full = RunDirectory(tmp_path / "full").read_history()
    assert history["iteration"].tolist() == [0, 2, 4, 6]
    assert history["genotype"] == history_full["genotype"]
    assert history["top_prob_mean"].tolist() == history_full["top_prob_mean"].tolist()


def test_resume_can_extend_the_number_of_iterations(tmp_path):
    fit(FitConfig(**dict(TINY, iterations=2)), out=tmp_path / "run", progress=False)
    result = fit(FitConfig(**dict(TINY, iterations=4)), resume=tmp_path / "run", progress=False)
    assert [r["iteration"] for r in result.rows] == [1, 2, 3, 4]
    history = RunDirectory(tmp_path / "run").read_history()
    genotypes = history["genotype"]
    assert len(genotypes) == 3  # iterations 0, 2 and, after the resume, 4
    assert history["genotype_changed"].tolist() == [0] + [int(a != b) for a, b in zip(genotypes, genotypes[1:])]


def test_non_finite_loss_stops_with_a_clear_error_and_keeps_the_last_checkpoint(tmp_path, monkeypatch):
    import bayesnas.inference.svi as svi

    built = {}
    original = svi.build_meta_network
    monkeypatch.setattr(svi, "build_meta_network", lambda *a, **k: built.setdefault("meta", original(*a, **k)))

    def poison(iteration, row):  # runs after iteration 3's step, as a diverged step would leave it
        if iteration == 3:
            with torch.no_grad():
                built["meta"].mu[0] = float("nan")

    with pytest.raises(NonFiniteLossError) as info:
        fit(FitConfig(**TINY), out=tmp_path / "run", progress=False, callbacks=[poison])
    message = str(info.value)
    assert message.startswith("iteration 3: ") or message.startswith("iteration 4: ")
    assert "checkpoint_last.pt, iteration 2) is kept" in message
    state = RunDirectory(tmp_path / "run").load_checkpoint()
    assert state["iteration"] == 2
    assert torch.isfinite(state["stateful"]["meta"]["mu"]).all()


def test_bad_settings_and_folders_are_clear_errors(tmp_path):
    with pytest.raises(ConfigError, match="variant"):
        fit(FitConfig(**dict(TINY, variant="bogus")), out=tmp_path / "a", progress=False)
    with pytest.raises(RunError, match="no such run folder"):
        fit(resume=tmp_path / "missing", progress=False)
    fit(FitConfig(**dict(TINY, iterations=1)), out=tmp_path / "b", progress=False)
    with pytest.raises(RunError, match="already holds a run"):
        fit(FitConfig(**TINY), out=tmp_path / "b", progress=False)
    (tmp_path / "c").mkdir()
    with open(tmp_path / "c" / "config.json", "w") as f:
        json.dump(FitConfig(**TINY).to_dict(), f)
    with pytest.raises(RunError, match="checkpoint_last.pt: missing"):
        fit(resume=tmp_path / "c", progress=False)


def test_validation_adapts_with_the_training_kl_weight(tmp_path, monkeypatch):
    """The guide's mean step depends on the KL weight: validating with another weight than
    training's would score a different posterior (a bug once: validation used 1.0)."""
    import bayesnas.inference.svi as svi

    seen = []
    real_adapt = svi.adapt

    def spy(*args, **kwargs):
        if kwargs.get("first_order"):
            seen.append(kwargs.get("kl_weight"))
        return real_adapt(*args, **kwargs)

    monkeypatch.setattr(svi, "adapt", spy)
    fit(FitConfig(**dict(TINY, iterations=3, kl_weight=0.25)), out=tmp_path / "run", progress=False)
    assert seen and all(w == 0.25 for w in seen)


def test_search_on_a_smaller_proxy_image_size(tmp_path):
    from bayesnas import load_run

    result = fit(FitConfig(**dict(TINY, iterations=1, val_every=1, image_size=7)), out=tmp_path / "run", progress=False)
    run = load_run(result.run_dir)
    assert run.config.image_size == 7
    task = run.task_sampler().task(0)
    assert task.support_x.shape[-2:] == (7, 7)
    post = run.task_posterior(task.support_x, task.support_y, seed=0)
    assert post.predict(task.query_x).probs.shape == (task.query_x.shape[0], TINY.get("ways", 5))
    with pytest.raises(ConfigError, match="image_size"):
        FitConfig(**dict(TINY, image_size=0)).validate()
