"""Edge posteriors: probabilities, entropy, tables, sampling, task adaptation, prediction, ECE."""
import math

import pytest
import torch

from bayesnas.analysis.derive import derive_genotype
from bayesnas.analysis.posterior import (
    AdaptedPosterior,
    EdgePosterior,
    EdgeRow,
    PerCell,
    PosteriorHistory,
    Prediction,
    _entropy,
    expected_calibration_error,
)
from bayesnas.inference import MetaNetwork
from bayesnas.models.genotypes import EDGES, edge_index, state_name
from bayesnas.models.operations import OPS
from tests.toy import ChannelSelectNet, channel_tasks


def random_posterior(seed=0, scale=2.0):
    g = torch.Generator().manual_seed(seed)
    return EdgePosterior(scale * torch.randn(14, 10, generator=g), scale * torch.randn(14, 10, generator=g), tau=0.7)


# --- expected calibration error -------------------------------------------------------


def test_ece_of_a_hand_computed_case():
    probs = torch.tensor([[0.9, 0.1], [0.3, 0.7], [0.65, 0.35], [0.55, 0.45]], dtype=torch.float64)
    labels = torch.tensor([0, 0, 0, 1])
    # 5 bins: (0.8, 1] holds 0.9 (right): |1 - 0.9| = 0.1; (0.6, 0.8] holds 0.7 (wrong) and
    # 0.65 (right): 2 * |0.5 - 0.675| = 0.35; (0.4, 0.6] holds 0.55 (wrong): 0.55.
    assert expected_calibration_error(probs, labels, bins=5) == pytest.approx((0.1 + 0.35 + 0.55) / 4, abs=1e-12)
    # one bin: accuracy 0.5, mean confidence 0.7
    assert expected_calibration_error(probs, labels, bins=1) == pytest.approx(0.2, abs=1e-12)


def test_ece_is_zero_when_confidence_matches_accuracy_and_bins_are_right_closed():
    probs = torch.tensor([[0.8, 0.2]] * 10, dtype=torch.float64)
    labels = torch.tensor([0] * 8 + [1] * 2)
    assert expected_calibration_error(probs, labels) == pytest.approx(0.0, abs=1e-12)
    # confidence exactly 0.5 belongs to the bin (0, 0.5] of 2 bins, 1.0 to (0.5, 1]
    probs = torch.tensor([[0.5, 0.5], [1.0, 0.0]])
    assert expected_calibration_error(probs, torch.tensor([1, 0]), bins=2) == pytest.approx((0.5 + 0.0) / 2)


def test_ece_agrees_with_a_plain_loop_and_accepts_leading_dims():
    g = torch.Generator().manual_seed(1)
    probs = torch.randn(3, 40, 5, generator=g).mul(2).softmax(-1)
    labels = torch.randint(0, 5, (3, 40), generator=g)
    flat_p, flat_y = probs.reshape(-1, 5).double(), labels.reshape(-1)
    total = 0.0
    for b in range(15):
        lo, hi = b / 15, (b + 1) / 15
        conf = flat_p.max(-1).values
        inside = (conf > lo) & (conf <= hi)
        if inside.any():
            acc = (flat_p.argmax(-1)[inside] == flat_y[inside]).double().mean()
            total += inside.double().mean() * abs(acc - conf[inside].mean())
    assert expected_calibration_error(probs, labels) == pytest.approx(float(total), abs=1e-12)
    with pytest.raises(ValueError, match="expected"):
        expected_calibration_error(probs, labels[:, :3])


# --- the edge posterior object ----------------------------------------------------------


def test_probabilities_sum_to_one_and_entropy_matches_categorical():
    post = random_posterior()
    for logits, probs, h in zip(post.logits, post.probs, post.entropy(), strict=True):
        assert probs.shape == (14, 10) and h.shape == (14,)
        torch.testing.assert_close(probs.sum(-1), torch.ones(14))
        torch.testing.assert_close(h, torch.distributions.Categorical(logits=logits).entropy())
    uniform = EdgePosterior(torch.zeros(14, 10), torch.zeros(14, 10))
    torch.testing.assert_close(uniform.entropy().reduce, torch.full((14,), math.log(10)))
    assert post.probs.normal is not None and post.probs["reduce"].shape == (14, 10)
    with pytest.raises(KeyError, match="cell type"):
        post.probs["reduction"]
    with pytest.raises(ValueError, match=r"\(14, 10\)"):
        EdgePosterior(torch.zeros(10, 14), torch.zeros(14, 10))


def test_table_rows_name_the_right_edge_and_sort():
    post = random_posterior()
    rows = post.table()
    assert len(rows) == 2 * 14 * 10 and isinstance(rows[0], EdgeRow)
    for row in rows[::7]:
        probs = post.probs[row.cell]
        assert (row.source, row.target) == EDGES[row.edge]
        assert row.prob == pytest.approx(float(probs[edge_index(row.source, row.target), OPS.index(row.op)]))
    by_prob = post.table(sort_by="prob", descending=True)
    assert [r.prob for r in by_prob] == sorted((r.prob for r in rows), reverse=True)
    best = max(rows, key=lambda r: r.prob)
    assert by_prob[0] == best
    by_cell_op = post.table(sort_by=("cell", "op"))
    assert by_cell_op[0].cell == "normal" and by_cell_op[0].op == sorted(OPS)[0]
    assert post.table(sort_by=lambda r: -r.prob)[0] == best
    with pytest.raises(ValueError, match="sort_by"):
        post.table(sort_by="probability")


def test_top_k_per_edge_is_the_argmax_first():
    post = random_posterior(seed=2)
    rows = post.top(2)
    assert len(rows) == 2 * 14 * 2
    for cell, probs in zip(("normal", "reduce"), post.probs, strict=True):
        for e in range(14):
            first, second = [r for r in rows if r.cell == cell and r.edge == e]
            assert first.op == OPS[int(probs[e].argmax())] and first.prob >= second.prob
    with pytest.raises(ValueError):
        post.top(11)


def test_derive_is_derive_genotype_of_the_probabilities():
    post = random_posterior(seed=3)
    assert post.derive() == derive_genotype(post.probs.normal, post.probs.reduce)


def test_samples_follow_the_posterior_through_the_derivation():
    # node 0 has exactly two incoming edges, so both are always kept and its ops are the
    # ops drawn on edges 0 and 1; 'none' is ruled out so a draw is always a real op
    target = torch.tensor([1e-9, 0.5, 0.3, 0.2, 1e-9, 1e-9, 1e-9, 1e-9, 1e-9, 1e-9])
    logits = torch.zeros(14, 10)
    logits[0] = target.log()
    post = EdgePosterior(logits, torch.zeros(14, 10), tau=0.5)
    draws = post.sample(1500, tau=0, generator=torch.Generator().manual_seed(0))
    ops = [dict((src, op) for op, src in g.normal[:2])[0] for g in draws]
    for o in (1, 2, 3):
        freq = ops.count(OPS[o]) / len(ops)
        se = math.sqrt(target[o] * (1 - target[o]) / len(ops))
        assert abs(freq - target[o].item()) < 4 * se
    # categorical draws of a sharp posterior give its derived cell
    sharp = EdgePosterior(8 * random_posterior(seed=4).logits.normal, 8 * random_posterior(seed=5).logits.reduce)
    again = sharp.sample(5, tau=0, generator=torch.Generator().manual_seed(1))
    assert sum(g == sharp.derive() for g in again) >= 4
    # relaxed draws are valid genotypes that vary with the noise
    relaxed = post.sample(20, generator=torch.Generator().manual_seed(2))
    assert len({tuple(g.normal) for g in relaxed}) > 1
    # the same generator seed gives the same genotypes
    a = post.sample(4, generator=torch.Generator().manual_seed(7))
    b = post.sample(4, generator=torch.Generator().manual_seed(7))
    assert a == b


@pytest.mark.slow
def test_plots_are_figures_and_save_atomically(tmp_path):
    post = random_posterior(seed=6)
    fig = post.plot(path=tmp_path / "edges.png")
    assert [ax.get_title() for ax in fig.axes[:2]] == ["normal cell", "reduction cell"]
    assert (tmp_path / "edges.png").stat().st_size > 10_000
    assert [p.name for p in tmp_path.iterdir()] == ["edges.png"]  # no temp file left behind
    history = PosteriorHistory([0, 10, 20], torch.randn(3, 14, 10), torch.randn(3, 14, 10))
    fig = history.plot(path=tmp_path / "history.pdf")
    assert len(fig.axes) == 28 and (tmp_path / "history.pdf").exists()
    assert history.at(-1).label.endswith("iteration 20")
    torch.testing.assert_close(history.at(1).probs.normal, history.probs.normal[1])
    assert history.entropy().reduce.shape == (3, 14)
    from bayesnas.errors import ConfigError

    with pytest.raises(ConfigError, match="cannot save"):
        post.plot(path=tmp_path / "edges.nope")


def test_state_names():
    assert [state_name(s) for s in range(6)] == ["c_{k-2}", "c_{k-1}", "n0", "n1", "n2", "n3"]
    assert PerCell(1, 2)["reduce"] == 2 and PerCell(1, 2)[0] == 1


# --- a task's posterior -------------------------------------------------------------------


def toy_meta(seed=0):
    torch.manual_seed(seed)
    return MetaNetwork(ChannelSelectNet(), sigma_init=0.5, inner_lr={"mu": 1.0, "rho": 0.1, "alpha": 5.0})


@pytest.mark.parametrize("relaxed", [True, False])
def test_task_posterior_moves_probability_toward_the_known_best_op(relaxed):
    # Only channel `signal` of the toy inputs tells the classes apart, so op `signal` of
    # edge 0 is the task's best op by construction; the meta-level posterior is uniform.
    signal = 3
    meta = toy_meta()
    before = EdgePosterior.from_meta(meta).probs.normal[0]
    g = torch.Generator().manual_seed(0)
    sx, sy, qx, qy = channel_tasks(12, shots=10, signal_channel=signal, generator=g)
    gains, accs = [], []
    for t in range(12):
        post = AdaptedPosterior.from_support(meta, sx[t], sy[t], steps=10, tau=1.0, relaxed=relaxed, seed=t)
        gains.append(post.probs.normal[0] - before)
        accs.append((post.predict(qx[t], samples=4, seed=t).labels == qy[t]).float().mean())
    gains = torch.stack(gains)
    gain = gains.mean(0)
    others = torch.cat([gain[:signal], gain[signal + 1:]])
    # Margins checked over 4 seeds and signal channels: on average the signal op gains
    # 0.09-0.43 over its prior 0.1 and no other op gains more than 0.001; it gains on at
    # least 2/3 of single tasks; queries are classified at 0.66-0.94.
    assert gain.argmax().item() == signal
    assert gain[signal].item() > 0.05
    assert others.max().item() < min(0.01, gain[signal].item() / 5)
    assert (gains[:, signal] > 0).float().mean().item() >= 0.6
    assert torch.stack(accs).mean().item() > 0.6  # chance is 0.5
    # edges the toy network never reads get no likelihood gradient: they stay put in the
    # softmax variant (no sampled KL term to move them)
    if not relaxed:
        torch.testing.assert_close(post.probs.normal[1:], EdgePosterior.from_meta(meta).probs.normal[1:])


def test_entropy_and_mutual_information_of_a_known_prediction():
    # two posterior samples that disagree completely on point 0 and agree on point 1
    sample_probs = torch.tensor([[[0.9, 0.1], [0.8, 0.2]],
                                 [[0.1, 0.9], [0.8, 0.2]]], dtype=torch.float64)
    probs = sample_probs.mean(0)                       # [[0.5, 0.5], [0.8, 0.2]]
    pred = Prediction(probs, _entropy(probs), sample_probs)
    h_09 = -(0.9 * math.log(0.9) + 0.1 * math.log(0.1))      # 0.3250830
    h_08 = -(0.8 * math.log(0.8) + 0.2 * math.log(0.2))      # 0.5004024
    torch.testing.assert_close(pred.entropy, torch.tensor([math.log(2), h_08], dtype=torch.float64))
    torch.testing.assert_close(pred.expected_entropy, torch.tensor([h_09, h_08], dtype=torch.float64))
    # point 0: log 2 - 0.3250830 = 0.3680642 nats of disagreement; point 1: none
    torch.testing.assert_close(pred.mutual_information, torch.tensor([0.3680642, 0.0], dtype=torch.float64),
                               atol=1e-7, rtol=0)
    assert pred.labels.tolist() == [0, 0]


def test_predict_averages_the_posterior_samples():
    meta = toy_meta(1)
    sx, sy, qx, qy = channel_tasks(1, generator=torch.Generator().manual_seed(1))
    post = AdaptedPosterior.from_support(meta, sx[0], sy[0], steps=3, tau=0.5, samples=6, seed=0)
    pred = post.predict(qx[0], seed=0)
    assert pred.probs.shape == (10, 2) and pred.sample_probs.shape == (6, 10, 2) and pred.entropy.shape == (10,)
    torch.testing.assert_close(pred.probs, pred.sample_probs.mean(0))
    torch.testing.assert_close(pred.probs.sum(-1), torch.ones(10))
    # entropy and its split, recomputed by hand from the returned probabilities
    by_hand = -(pred.probs * pred.probs.log()).sum(-1)
    torch.testing.assert_close(pred.entropy, by_hand)
    per_sample = -(pred.sample_probs * pred.sample_probs.log()).sum(-1)   # [6, 10]
    torch.testing.assert_close(pred.expected_entropy, per_sample.mean(0))
    torch.testing.assert_close(pred.mutual_information, by_hand - per_sample.mean(0))
    assert torch.equal(post.predict(qx[0], seed=3).probs, post.predict(qx[0], seed=3).probs)
    again = AdaptedPosterior.from_support(meta, sx[0], sy[0], steps=3, tau=0.5, seed=0)
    torch.testing.assert_close(again.probs.normal, post.probs.normal)
    assert post.weight_mean.shape == post.weight_scale.shape == meta.mu.shape
    # zero steps: the task posterior is the meta-level one
    same = AdaptedPosterior.from_support(meta, sx[0], sy[0], steps=0)
    torch.testing.assert_close(same.probs.reduce, EdgePosterior.from_meta(meta).probs.reduce)
    with pytest.raises(ValueError, match="one task"):
        AdaptedPosterior.from_support(meta, sx, sy, steps=1)


# --- search diagnostics --------------------------------------------------------------------


def test_search_diagnostics_of_known_posteriors():
    uniform = EdgePosterior(torch.zeros(14, 10), torch.zeros(14, 10)).diagnostics()
    assert uniform.edge_entropy_mean == pytest.approx(math.log(10), abs=1e-6)
    assert uniform.edge_entropy_max == pytest.approx(math.log(10), abs=1e-6)
    assert uniform.top_prob_mean == pytest.approx(0.1, abs=1e-7)
    assert uniform.genotype_changed == 0
    # one edge of the reduction cell sure of one op: it lowers the mean, not the max
    sure = torch.zeros(14, 10)
    sure[3, 5] = 50.0
    d = EdgePosterior(torch.zeros(14, 10), sure).diagnostics(previous=uniform.genotype)
    assert d.edge_entropy_mean == pytest.approx(math.log(10) * 27 / 28, abs=1e-5)
    assert d.edge_entropy_max == pytest.approx(math.log(10), abs=1e-6)
    assert d.top_prob_mean == pytest.approx((27 * 0.1 + 1.0) / 28, abs=1e-6)
    from bayesnas.models.genotypes import genotype_string

    assert d.genotype == genotype_string(EdgePosterior(torch.zeros(14, 10), sure).derive())
    assert d.genotype.split("reduce ")[1].split(" ")[1].startswith("n1=")  # edge 3 is c_{k-1} -> n1
    assert f"{OPS[5]}(1)" in d.genotype.split("reduce ")[1].split(" ")[1]
    assert d.genotype_changed == 1
    assert EdgePosterior(torch.zeros(14, 10), sure).diagnostics(previous=d.genotype).genotype_changed == 0


def test_history_diagnostics_table_counts_changes_between_shown_rows():
    from bayesnas.analysis.report import format_diagnostics_table

    g = torch.Generator().manual_seed(0)
    a, b = 3 * torch.randn(2, 14, 10, generator=g), 3 * torch.randn(2, 14, 10, generator=g)
    # genotypes: A A B B A A A B  -> changes at entries 2, 4, 7
    pick = [a, a, b, b, a, a, a, b]
    history = PosteriorHistory(list(range(0, 80, 10)), torch.stack([p[0] for p in pick]),
                               torch.stack([p[1] for p in pick]))
    rows = history.diagnostics()
    assert [d.genotype_changed for d in rows] == [0, 0, 1, 0, 1, 0, 0, 1]
    assert rows[0].genotype != rows[2].genotype and rows[0].genotype == rows[4].genotype
    full = format_diagnostics_table(history).splitlines()
    assert full[0].split() == ["iteration", "entropy", "mean", "entropy", "max", "top-op", "prob", "changed"]
    assert [int(line.split()[0]) for line in full[1:-1]] == list(range(0, 80, 10))
    assert full[3].split() == ["20", f"{rows[2].edge_entropy_mean:.3f}", f"{rows[2].edge_entropy_max:.3f}",
                               f"{rows[2].top_prob_mean:.3f}", "1"]
    assert full[-1] == "the derived genotype changed 3 times in 8 logged steps, last at iteration 70"
    short = format_diagnostics_table(history, max_rows=3).splitlines()
    # entries 0, 4 (rounded from 3.5) and 7: changes at 2, 4 fall into the second row, 7 into the third
    assert [line.split()[0] for line in short[1:-1]] == ["0", "40", "70"]
    assert [line.split()[-1] for line in short[1:-1]] == ["0", "2", "1"]
    with pytest.raises(ValueError, match="max_rows"):
        format_diagnostics_table(history, max_rows=1)
    fig = history.plot_diagnostics()
    assert [ax.get_ylabel() for ax in fig.axes] == ["edge entropy (nats)", "mean top-op probability"]
