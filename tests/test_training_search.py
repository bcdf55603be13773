"""``fit`` end to end on the embedded data: run folder, resume, determinism, non-finite stop."""
import json
import os
from itertools import pairwise

import pytest
import torch

from bayesnas.config import FitConfig
from bayesnas.data import open_dataset
from bayesnas.errors import ConfigError, DataError, NonFiniteLossError, RunError
from bayesnas.training import RunDirectory, fit
from bayesnas.training.loop import data_config, task_samplers
from bayesnas.training.search import load_fit
from tests.data_fixtures import mini_imagenet_file, write_fewshot_file
from tests.toy import Kill

TINY = dict(iterations=6, channels=2, cells=3, queries=2, inner_steps=1, val_every=3, checkpoint_every=2,
            val_tasks=2, val_samples=2, log_every=2, threads=1,
            # the paper's second-order step, alpha stepped from the first iteration
            first_order=False, arch_warmup=0, arch_schedule="constant")


pytestmark = pytest.mark.usefixtures("tiny_on_small_data")


def gaussian_kl(mu_q, sigma_q, mu_p, sigma_p):
    """KL(N(mu_q, sigma_q^2) || N(mu_p, sigma_p^2)) summed over the last dim, in float64, by hand."""
    mu_q, sigma_q, mu_p, sigma_p = (t.double() for t in (mu_q, sigma_q, mu_p, sigma_p))
    per_weight = torch.log(sigma_p / sigma_q) + (sigma_q ** 2 + (mu_q - mu_p) ** 2) / (2 * sigma_p ** 2) - 0.5
    return per_weight.sum(-1)


@pytest.mark.slow
def test_fit_writes_a_complete_run_folder(tmp_path, monkeypatch):
    import bayesnas.training.search as svi

    adapted = []  # per training iteration: the prior (mu, sigma) and the adapted psi of the T tasks
    real_adapt = svi.adapt

    def spy(meta, *args, **kwargs):
        q = real_adapt(meta, *args, **kwargs)
        if not kwargs.get("first_order"):  # validation adapts first-order; training does not
            adapted.append(tuple(t.detach().clone() for t in (meta.mu, meta.sigma, q.mu, q.sigma)))
        return q

    monkeypatch.setattr(svi, "adapt", spy)
    result = fit(FitConfig(**TINY), out=tmp_path / "run", progress=False)
    run = RunDirectory(tmp_path / "run")
    names = sorted(os.listdir(run.path))
    assert names == ["README.md", "checkpoint_best.pt", "checkpoint_last.pt", "config.json", "derived_cell.png",
                     "log.txt", "metrics.csv", "posterior_history.h5", "sessions.json"]
    assert run.config()["iterations"] == 6
    rows = run.read_metrics()
    assert [r["iteration"] for r in rows] == [1, 2, 3, 4, 5, 6]
    assert rows[2]["val_acc"] is not None and rows[0]["val_acc"] is None
    # the logged KL of theta is the closed-form Gaussian KL of the adapted psi from the prior
    # of that iteration (before its optimiser step), averaged over the meta-batch's tasks
    assert len(adapted) == len(rows) == 6
    for row, (mu, sigma, psi_mu, psi_sigma) in zip(rows, adapted, strict=True):
        assert psi_mu.shape == (TINY.get("tasks", 2), mu.numel())
        expected = gaussian_kl(psi_mu, psi_sigma, mu, sigma).mean().item()
        assert row["kl_theta"] == pytest.approx(expected, rel=1e-3, abs=1e-4)
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


@pytest.mark.slow
def test_fit_logs_search_diagnostics_in_metrics_and_history(tmp_path):
    """Every logged step's diagnostics, in metrics.csv and the history, are those of the
    history's alpha at that iteration: entropy and top-op probability over the 28 edges,
    the derived genotype, and whether it changed since the previous log."""
    import math

    from bayesnas.analysis.posterior import EdgePosterior
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
    changed = [0] + [int(a != b) for a, b in pairwise(genotypes)]
    assert history["genotype_changed"].tolist() == changed
    assert [rows[i]["genotype_changed"] for i in (2, 4, 6)] == changed[1:]


@pytest.mark.slow
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


@pytest.mark.slow
def test_resume_can_extend_the_number_of_iterations(tmp_path):
    fit(FitConfig(**dict(TINY, iterations=2)), out=tmp_path / "run", progress=False)
    result = fit(FitConfig(**dict(TINY, iterations=4)), resume=tmp_path / "run", progress=False)
    assert [r["iteration"] for r in result.rows] == [1, 2, 3, 4]
    history = RunDirectory(tmp_path / "run").read_history()
    genotypes = history["genotype"]
    assert len(genotypes) == 3  # iterations 0, 2 and, after the resume, 4
    assert history["genotype_changed"].tolist() == [0] + [int(a != b) for a, b in pairwise(genotypes)]


@pytest.mark.slow
def test_non_finite_loss_stops_with_a_clear_error_and_keeps_the_last_checkpoint(tmp_path, monkeypatch):
    import bayesnas.training.search as svi

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


@pytest.mark.slow
def test_validation_adapts_with_the_training_kl_weight(tmp_path, monkeypatch):
    """The guide's mean step depends on the KL weight: validating with another weight than
    training's would score a different posterior (a bug once: validation used 1.0)."""
    import bayesnas.training.search as svi

    seen = []
    real_adapt = svi.adapt_held_out  # validation adapts like any held-out task

    def spy(*args, **kwargs):
        seen.append(kwargs.get("kl_weight"))
        return real_adapt(*args, **kwargs)

    monkeypatch.setattr(svi, "adapt_held_out", spy)
    fit(FitConfig(**dict(TINY, iterations=3, kl_weight=0.25)), out=tmp_path / "run", progress=False)
    assert seen and all(w == 0.25 for w in seen)


@pytest.mark.slow
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


@pytest.mark.parametrize("which, given, expected", [("mini", None, False), ("omniglot", None, True),
                                                    ("mini", True, True), ("omniglot", False, False)])
def test_rotations_default_on_for_omniglot_only_and_an_explicit_value_wins(which, given, expected, tmp_path,
                                                                            small_omniglot):
    path = mini_imagenet_file(tmp_path) if which == "mini" else small_omniglot
    settings = dict(TINY, data=path) if given is None else dict(TINY, data=path, rotations=given)
    cfg = FitConfig(**settings)
    train, val = task_samplers(cfg, open_dataset(path), torch.device("cpu"))
    assert train.rotations is expected and cfg.rotations is given  # the config given is left as it was
    assert data_config(cfg, open_dataset(path)).rotations is expected  # a new one says it: config.json records it
    assert val.rotations is False and val.split.name == "val"


@pytest.mark.slow
def test_fit_on_mini_imagenet_records_no_rotations(tmp_path):
    path = mini_imagenet_file(tmp_path)
    fit(FitConfig(**dict(TINY, data=path, ways=2, iterations=1, val_every=1)), out=tmp_path / "run", progress=False)
    saved = json.load(open(tmp_path / "run" / "config.json"))
    assert saved["rotations"] is False and saved["select_on"] == "val"


@pytest.mark.slow
def test_without_a_val_split_fit_refuses_unless_told_to_select_on_test(tmp_path):
    path = write_fewshot_file(tmp_path / "noval.h5", "Omniglot (no validation classes)", {"train": 6, "test": 5},
                              side=14, channels=1)
    with pytest.raises(DataError, match=r"noval\.h5: has no 'val' split .*--select-on test"):
        fit(FitConfig(**dict(TINY, data=path, iterations=1)), out=tmp_path / "refused", progress=False)
    assert not (tmp_path / "refused").exists()
    cfg = FitConfig(**dict(TINY, data=path, iterations=1, val_every=1, select_on="test"))
    _, val = task_samplers(cfg, open_dataset(path), torch.device("cpu"))
    assert val.split.name == "test"
    result = fit(cfg, out=tmp_path / "run", progress=False)
    assert result.rows[-1]["val_acc"] is not None
    assert json.load(open(tmp_path / "run" / "config.json"))["select_on"] == "test"
    with pytest.raises(ConfigError, match="select_on='train'"):
        FitConfig(**dict(TINY, select_on="train")).validate()


@pytest.mark.slow
def test_the_reference_supernet_is_a_switch_of_the_same_search(tmp_path):
    """FitConfig(supernet="reference") searches with the plain supernet: same parameters, same function."""
    from bayesnas.models import SearchNetwork
    from bayesnas.models.reference import ReferenceSearchNetwork, copy_parameters
    from bayesnas.training.search import build_meta_network

    cfg = FitConfig(**dict(TINY, supernet="reference"))
    torch.manual_seed(0)
    fused, reference = build_meta_network(FitConfig(**TINY), 1), build_meta_network(cfg, 1)
    assert isinstance(fused.net, SearchNetwork) and isinstance(reference.net, ReferenceSearchNetwork)
    copy_parameters(fused.net, reference.net)
    reference = build_meta_network(cfg, 1, net=reference.net)
    assert reference.mu.numel() == fused.mu.numel()
    x, z = torch.rand(3, 1, 14, 14), torch.full((14, 10), 0.1)
    with torch.no_grad():
        assert torch.allclose(reference.forward_task(x, reference.mu, z, z), fused.forward_task(x, fused.mu, z, z),
                              atol=1e-5)
    result = fit(FitConfig(**dict(TINY, supernet="reference", iterations=1, val_every=1)), out=tmp_path / "ref",
                 progress=False)
    assert result.rows[-1]["iteration"] == 1 and result.config.supernet == "reference"
