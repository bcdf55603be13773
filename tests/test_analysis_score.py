"""Scoring discrete cells with a meta-network: fixed edge weights, paired tasks, rank correlations."""
import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from bayesnas.analysis.score import (
    cell_edge_weights,
    kendall_tau,
    rank_correlation,
    score_cells,
    score_tasks,
    spearman_rho,
    weight_finetuner,
)
from bayesnas.cli.main import main
from bayesnas.errors import ConfigError
from bayesnas.inference import MetaNetwork
from bayesnas.models import DARTS_V2, OPS, edge_index, genotype_to_dict
from tests.toy import ChannelSelectNet, ToyBatch, channel_tasks


def test_cell_edge_weights_are_one_hot_on_the_kept_ops_and_none_elsewhere():
    zn, zr = cell_edge_weights(DARTS_V2)
    assert zn.shape == zr.shape == (14, 10)
    assert torch.equal(zn.sum(-1), torch.ones(14)) and torch.equal(zr.sum(-1), torch.ones(14))
    # DARTS_V2's normal node 3 keeps skip_connect from c_{k-2} and dil_conv_3x3 from n0
    assert zn[edge_index(0, 3), OPS.index("skip_connect")] == 1
    assert zn[edge_index(2, 3), OPS.index("dil_conv_3x3")] == 1
    # 8 kept edges per cell, the other 6 on none
    assert int((zn[:, OPS.index("none")] == 1).sum()) == 6
    assert int((zr[:, OPS.index("max_pool_3x3")] == 1).sum()) == 5


def _toy_cell(op):
    """A genotype whose edge 0 (c_{k-2} -> n0) carries ``op`` in both cells; the toy net reads only edge 0."""
    pairs = [(op, 0), ("skip_connect", 1), ("skip_connect", 0), ("skip_connect", 1),
             ("skip_connect", 0), ("skip_connect", 1), ("skip_connect", 0), ("skip_connect", 1)]
    return genotype_to_dict(DARTS_V2._replace(normal=pairs, reduce=pairs))


def test_the_cell_with_the_informative_op_scores_above_the_one_with_noise():
    # ChannelSelectNet: op k of edge 0 reads channel k; only channel 4 (sep_conv_3x3) carries the label
    torch.manual_seed(0)
    meta = MetaNetwork(ChannelSelectNet(), sigma_init=0.1, inner_lr={"mu": 0.5, "rho": 0.1, "alpha": 1.0})
    g = torch.Generator().manual_seed(3)
    batches = [ToyBatch(*channel_tasks(10, generator=g)) for _ in range(2)]
    cells = [("signal", _toy_cell(OPS[4])), ("noise", _toy_cell(OPS[3])), ("signal-again", _toy_cell(OPS[4]))]
    scores = score_tasks(meta, cells, batches, inner_steps=3, tau=1.0, kl_weight=1e-3, samples=2, seed=0)
    signal, noise, again = scores
    assert len(signal.accuracy) == 20
    assert signal.mean_accuracy > 0.8 and noise.mean_accuracy < 0.7
    assert signal.mean_loglik > noise.mean_loglik
    # the same cell on the same tasks with the same noise: the same per-task scores (paired)
    assert again.loglik == signal.loglik and again.accuracy == signal.accuracy


class _ToySampler:
    """Training tasks for the fine-tuner: task i of a fixed stream (``batch(indices)``)."""

    def batch(self, indices):
        indices = list(indices)
        return ToyBatch(*channel_tasks(len(indices), generator=torch.Generator().manual_seed(1000 + indices[0])))


def test_finetuned_scores_start_every_cell_from_the_same_weights_and_restore_them():
    from types import SimpleNamespace

    torch.manual_seed(0)
    meta = MetaNetwork(ChannelSelectNet(), sigma_init=0.1, inner_lr={"mu": 0.5, "rho": 0.1, "alpha": 1.0})
    before = [t.detach().clone() for t in (meta.mu, meta.rho, meta.alpha_normal, meta.alpha_reduce)]
    g = torch.Generator().manual_seed(3)
    batches = [ToyBatch(*channel_tasks(10, generator=g))]
    signal, noise = ("signal", _toy_cell(OPS[4])), ("noise", _toy_cell(OPS[3]))
    cfg = SimpleNamespace(tasks=2, inner_steps=2)
    seen = []
    tune = weight_finetuner(meta, cfg, _ToySampler(), steps=5, lr=0.05, seed=0, kl_weight=1e-3, restart=True)

    def recording(zn, zr):
        seen.append((zn.clone(), zr.clone()))
        tune(zn, zr)
        # the weights did move before the cell is scored
        assert not torch.equal(meta.mu, before[0]) and not torch.equal(meta.rho, before[1])

    args = (batches, 3, 1.0, 1e-3)
    tuned = score_tasks(meta, [signal, noise], *args, samples=2, seed=0, finetune=recording)
    # each cell's own edge weights reached the fine-tuner, and every weight is back afterwards
    assert [torch.equal(z[0], cell_edge_weights(c[1])[0]) for z, c in zip(seen, [signal, noise], strict=True)] \
        == [True, True]
    for old, new in zip(before, (meta.mu, meta.rho, meta.alpha_normal, meta.alpha_reduce), strict=True):
        assert torch.equal(old, new)
    # fine-tuning changed the scores, and a cell's score does not depend on the cells scored before it
    plain = score_tasks(meta, [signal], *args, samples=2, seed=0)[0]
    assert tuned[0].loglik != plain.loglik
    reordered = score_tasks(meta, [noise, signal], *args, samples=2, seed=0, finetune=tune)
    assert reordered[1].loglik == tuned[0].loglik and reordered[0].loglik == tuned[1].loglik


def test_rank_correlations_match_hand_computed_values():
    x = [1, 2, 3, 4, 5]
    assert kendall_tau(x, [1, 2, 3, 4, 5]) == pytest.approx(1.0)
    assert kendall_tau(x, [5, 4, 3, 2, 1]) == pytest.approx(-1.0)
    # one swapped adjacent pair: 9 concordant, 1 discordant of 10 -> 0.8; Spearman 1 - 6*2/(5*24) = 0.9
    assert kendall_tau(x, [2, 1, 3, 4, 5]) == pytest.approx(0.8)
    assert spearman_rho(x, [2, 1, 3, 4, 5]) == pytest.approx(0.9)
    # tau-b with a tie in y: pairs (1,2) tied; C = 9, D = 0, sqrt(10 * 9)
    assert kendall_tau(x, [1, 1, 3, 4, 5]) == pytest.approx(9 / np.sqrt(90))
    r = rank_correlation(x, [1, 2, 3, 4, 5], permutations=2000)
    # a perfect order of 5 happens in 2 of 120 permutations (|tau| = 1): p about 1/60
    assert r.n == 5 and 0.005 < r.kendall_p < 0.04
    with pytest.raises(ValueError, match="same length"):
        rank_correlation([1, 2, 3], [1, 2])


@pytest.fixture
def fit_run(tiny_fit_run):
    return tiny_fit_run


def test_score_cells_pairs_tasks_and_labels_random_cells_like_compare(fit_run):
    from bayesnas.analysis.compare import architectures

    result = score_cells(fit_run, ["darts_v2"], tasks=4, batch=2, samples=1, random_cells=2)
    labels = [s.label for s in result.scores]
    assert labels == ["darts_v2", "random-1", "random-2"]
    assert result.scores[1].genotype == architectures((), 2, ())[0][1]
    assert all(len(s.loglik) == 4 and all(v <= 0 for v in s.loglik) for s in result.scores)
    again = score_cells(fit_run, {"again": "darts_v2"}, tasks=4, batch=2, samples=1)
    assert again.scores[0].loglik == result.scores[0].loglik
    tuned = score_cells(fit_run, ["darts_v2"], tasks=4, batch=2, samples=1, finetune=2)
    assert tuned.finetune == 2 and tuned.to_dict()["finetune"] == 2
    assert tuned.scores[0].loglik != result.scores[0].loglik
    with pytest.raises(ConfigError, match="finetune=-1"):
        score_cells(fit_run, ["darts_v2"], tasks=2, finetune=-1)
    with pytest.raises(ConfigError, match="Conv-4 is not a cell"):
        score_cells(fit_run, ["conv4"], tasks=2)
    with pytest.raises(ConfigError, match="tasks=0"):
        score_cells(fit_run, ["darts_v2"], tasks=0)


def test_score_cells_command_prints_a_table_and_writes_json(fit_run, tmp_path):
    out = tmp_path / "scores.json"
    result = CliRunner().invoke(main, ["score-cells", fit_run, "darts_v2", "--random", "2", "--tasks", "3",
                                       "--samples", "1", "--finetune", "1", "--json", str(out)])
    assert result.exit_code == 0, result.output
    assert "darts_v2" in result.output and "random-2" in result.output and "best:" in result.output
    saved = json.loads(out.read_text())
    assert saved["tasks"] == 3 and len(saved["scores"]) == 3 and saved["finetune"] == 1
    bad = CliRunner().invoke(main, ["score-cells", fit_run, "conv4"])
    assert bad.exit_code != 0 and "Conv-4 is not a cell" in bad.output and "Traceback" not in bad.output


def test_scores_are_the_same_with_the_discrete_path_on_and_off(fit_run, monkeypatch):
    """score_tasks computes only the kept edges of each cell (SearchCell.forward_discrete) by default;
    computing every op of every edge gives the same per-task scores up to float32 rounding."""
    from bayesnas.analysis.compare import architectures
    from bayesnas.analysis.score import held_out
    from bayesnas.models import SearchCell

    calls = []
    original = SearchCell.forward_discrete
    monkeypatch.setattr(SearchCell, "forward_discrete", lambda self, *a: calls.append(1) or original(self, *a))
    h = held_out(fit_run, tasks=3, batch=2)
    cells = [("darts_v2", genotype_to_dict(DARTS_V2)), architectures((), 1, ())[0]]
    args = (h.meta, cells, h.task_batches, h.cfg.inner_steps, h.tau, h.kl_weight)
    fast = score_tasks(*args, samples=2, discrete=True)
    assert calls  # the sparse path ran
    calls.clear()
    fused = score_tasks(*args, samples=2, discrete=False)
    assert not calls
    for a, b in zip(fast, fused, strict=True):
        assert a.accuracy == b.accuracy
        assert np.allclose(a.loglik, b.loglik, rtol=0, atol=1e-4), (a.label, a.loglik, b.loglik)
        assert a.loglik != pytest.approx([0.0] * len(a.loglik))
