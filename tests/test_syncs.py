"""Host syncs in the training and evaluation hot paths: one read per step, counted as
benchmarks/bench_syncs.py counts them; a non-finite loss is still an error, raised at that read."""
import pytest
import torch

from bayesnas.config import FitConfig, RetrainConfig
from bayesnas.data import open_data
from bayesnas.errors import NonFiniteLossError
from bayesnas.inference.unroll import deferred_finite_checks, require_finite
from bayesnas.training.loop import read_step, task_samplers
from bayesnas.training.retrain import build_retrain_network, maml_step, task_accuracies
from bayesnas.training.search import build_meta_network, evaluate_tasks, make_optimiser, svi_step
from benchmarks.bench_syncs import count_syncs


def test_the_counter_sees_every_kind_of_read():
    t = torch.tensor([1.0, 2.0, float("nan")])

    def reads():
        t.sum().item()
        bool(t[0] > 0)
        float(t[1])
        t.tolist()
        t[t > 1]
        t.numpy()
        t + 1  # no read

    assert count_syncs(reads)[1].total == 6


@pytest.fixture
def no_validation(monkeypatch):
    monkeypatch.setenv("BAYESNAS_VALIDATE", "0")


@pytest.mark.parametrize("batch_tasks", [True, False])
def test_an_svi_step_reads_the_device_once(small_omniglot, no_validation, batch_tasks):
    cfg = FitConfig(data=small_omniglot, channels=2, queries=2, inner_steps=3, batch_tasks=batch_tasks)
    sampler, _ = task_samplers(cfg, open_data(small_omniglot), torch.device("cpu"))
    torch.manual_seed(0)
    meta = build_meta_network(cfg, 1)
    optimiser = make_optimiser(meta, cfg)
    svi_step(meta, optimiser, sampler.batch([0, 1]), cfg, 1)
    row, counter = count_syncs(lambda: svi_step(meta, optimiser, sampler.batch([2, 3]), cfg, 2))
    assert counter.total == 1, counter.places
    assert all(isinstance(row[k], float) for k in ("loss", "loglik", "kl_theta", "kl_z", "acc", "sigma_mean"))


def test_validation_is_on_in_tests_and_off_by_default(small_omniglot, monkeypatch):
    """With the checks on (BAYESNAS_VALIDATE=1, as the suite runs) the distributions read
    their arguments: the same step reads the device many times more."""
    cfg = FitConfig(data=small_omniglot, channels=2, queries=2, inner_steps=1)
    sampler, _ = task_samplers(cfg, open_data(small_omniglot), torch.device("cpu"))
    meta = build_meta_network(cfg, 1)
    optimiser = make_optimiser(meta, cfg)
    counts = {}
    for flag in ("1", "0"):
        monkeypatch.setenv("BAYESNAS_VALIDATE", flag)
        counts[flag] = count_syncs(lambda: svi_step(meta, optimiser, sampler.batch([0, 1]), cfg, 1))[1].total
    assert counts["0"] == 1 and counts["1"] > 10


def test_evaluation_reads_once_not_once_per_task(small_omniglot, no_validation):
    cfg = FitConfig(data=small_omniglot, channels=2, queries=2, inner_steps=1, val_samples=2)
    _, sampler = task_samplers(cfg, open_data(small_omniglot), torch.device("cpu"))
    meta = build_meta_network(cfg, 1)
    (acc, elbo), counter = count_syncs(lambda: evaluate_tasks(meta, cfg, sampler, 6, 1.0, seed=3))
    assert counter.total == 1, counter.places
    assert 0 <= acc <= 1 and elbo < 0
    rcfg = RetrainConfig(channels=4, queries=2, inner_steps=1)
    data = open_data(None)
    _, val = task_samplers(rcfg, data, torch.device("cpu"))
    net = build_retrain_network(rcfg, data.channels, data.image_size[0])
    for batched in (False, True):
        accs, counter = count_syncs(lambda b=batched: task_accuracies(net, val, range(5), 1, 0.4, chunk=2, batched=b))
        assert counter.total == 1 and accs.shape == (5,) and accs.dtype == torch.float64
    optimiser = torch.optim.Adam(net.parameters())
    train, _ = task_samplers(rcfg, data, torch.device("cpu"))
    row, counter = count_syncs(lambda: maml_step(net, optimiser, train.batch([0, 1]), rcfg))
    assert counter.total == 1 and set(row) == {"loss", "acc"}


def test_deferred_checks_raise_the_first_failure_at_the_read():
    good, bad = torch.tensor(1.5), torch.tensor([0.0, float("inf")])
    with deferred_finite_checks() as checks:
        require_finite(good, "the first loss")
        require_finite(bad, "inner step 1: objective")  # recorded, not raised
        require_finite(torch.tensor(float("nan")), "the query ELBO")
    with pytest.raises(NonFiniteLossError, match=r"^inner step 1: objective is inf \(not finite\)$"):
        read_step({"loss": good}, checks)
    with deferred_finite_checks() as checks:
        require_finite(good, "the loss")
    assert read_step({"loss": good, "tau": 0.5}, checks) == {"loss": 1.5, "tau": 0.5}
    with pytest.raises(NonFiniteLossError, match="the query ELBO is nan"):  # outside a block: at once
        require_finite(torch.tensor(float("nan")), "the query ELBO")


def test_a_nan_step_still_stops_fit_naming_the_iteration(tmp_path, small_omniglot, no_validation, monkeypatch):
    import bayesnas.training.search as svi
    from bayesnas.training import fit

    real = svi.elbo_terms

    def poisoned(meta, x, y, q, tau, relaxed=True, **kw):  # training's query ELBO goes NaN from iteration 2
        terms = real(meta, x, y, q, tau, relaxed, **kw)
        if torch.is_grad_enabled() and calls.append(1) is None and len(calls) >= 2:
            return terms._replace(loglik=terms.loglik * float("nan"))
        return terms

    calls = []
    monkeypatch.setattr(svi, "elbo_terms", poisoned)
    with pytest.raises(NonFiniteLossError, match=r"^iteration 2: the query ELBO is nan \(not finite\); the last "
                                                  r"good checkpoint .* iteration 1\) is kept"):
        fit(FitConfig(data=small_omniglot, iterations=3, channels=2, queries=2, inner_steps=1, checkpoint_every=1,
                      val_every=3, val_tasks=2), out=tmp_path / "run", progress=False)
