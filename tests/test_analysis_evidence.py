"""Deriving a cell by held-out evidence: a known-best op on a toy family, decisions and posteriors."""
import json

import pytest
import torch
from click.testing import CliRunner

from bayesnas.analysis.evidence import evidence_derivation
from bayesnas.cli.main import main
from bayesnas.errors import WriteError
from bayesnas.inference import MetaNetwork
from bayesnas.models import OPS, genotype_to_dict, load_genotype
from tests.toy import ChannelSelectNet, ToyBatch, channel_tasks


def test_evidence_finds_the_informative_op_of_the_toy_family():
    # ChannelSelectNet reads only edge 0 (c_{k-2} -> n0) of both cells; op k reads channel k and
    # only channel 4 (sep_conv_3x3) carries the label
    torch.manual_seed(0)
    meta = MetaNetwork(ChannelSelectNet(), sigma_init=0.1, inner_lr={"mu": 0.5, "rho": 0.1, "alpha": 1.0})
    g = torch.Generator().manual_seed(3)
    batches = [ToyBatch(*channel_tasks(8, generator=g))]
    seen = []
    genotype, decisions, edges = evidence_derivation(meta, batches, inner_steps=1, tau=1.0, kl_weight=1e-3,
                                                     samples=1, seed=0, progress=lambda d, t: seen.append((d, t)))
    assert genotype.normal[0] == ("sep_conv_3x3", 0) and genotype.reduce[0] == ("sep_conv_3x3", 0)
    assert len(decisions) == 28 and seen[-1] == (57, 57)
    first = next(d for d in decisions if d.edge == 0)
    assert first.op == "sep_conv_3x3" and first.difference - first.ci95 > 0
    assert set(first.mean_loglik) == set(OPS[1:]) and sum(first.posterior.values()) == pytest.approx(1.0)
    assert first.posterior["sep_conv_3x3"] > 0.99
    # an edge the toy never reads: every op scores the same, the posterior is the prior's (softmax(alpha))
    unused = next(d for d in decisions if d.cell == "normal" and d.edge == 13)
    assert unused.difference == pytest.approx(0.0, abs=1e-9)
    prior = meta.alpha_normal.detach().softmax(-1)[13, 1:]
    assert [unused.posterior[o] for o in OPS[1:]] == pytest.approx((prior / prior.sum()).tolist(), rel=1e-5)
    # node 0 of each cell keeps both of its edges; the edge that carries the signal costs most to remove
    node0 = [e for e in edges if e.node == 0]
    assert all(e.kept == [0, 1] and e.drop[0] > e.drop[1] for e in node0)


def test_derive_cell_by_evidence_writes_the_genotype_and_every_decision(tiny_fit_run, monkeypatch, tmp_path):
    import bayesnas.analysis.evidence as evidence

    # the run's meta-network is loaded and its tasks drawn as for real; the ~280 scorings are replaced by a
    # cheap known score: sep_conv_3x3 on c_{k-1} -> n2 of the reduction cell is worth 1 per task
    def fake_scores(meta, z_normal, z_reduce, task_batches, *args):
        n = sum(b.support_x.shape[0] for b in task_batches)
        return torch.full((n,), float(z_reduce[6, 4])) + 0.01 * torch.arange(n), None

    monkeypatch.setattr(evidence, "architecture_scores", fake_scores)
    out = tmp_path / "cell.json"
    result = CliRunner().invoke(main, ["derive-cell", tiny_fit_run, "--by", "evidence", "--tasks", "2", "--no-plot",
                                       "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "by held-out evidence on 2 validation tasks" in result.output
    genotype = load_genotype(out)
    saved = json.loads((tmp_path / "evidence.json").read_text())
    assert len(saved["decisions"]) == 28 and len(saved["edges"]) == 8
    kept = {(e["cell"], e["node"]): e["kept"] for e in saved["edges"]}
    assert [s for _, s in genotype.normal[:2]] == kept[("normal", 0)]
    # edge 6 is c_{k-1} -> n2: its op and edge are kept, the other ops' scores tie (the first op wins)
    assert ("sep_conv_3x3", 1) in genotype.reduce[4:6] and 1 in kept[("reduce", 2)]
    decision = next(d for d in saved["decisions"] if d["cell"] == "reduce" and d["edge"] == 6)
    assert decision["op"] == "sep_conv_3x3" and decision["difference"] == pytest.approx(1.0)
    bad = CliRunner().invoke(main, ["derive-cell", tiny_fit_run, "--by", "evidence", "--task-seed", "3"])
    assert bad.exit_code != 0 and "takes no task_seed" in bad.output and "Traceback" not in bad.output


def test_derive_cell_by_score_keeps_the_candidate_the_scores_favour(tiny_fit_run, monkeypatch, tmp_path):
    import bayesnas.analysis.score as score
    from bayesnas.analysis.compare import architectures
    from bayesnas.analysis.derive import score_candidates


    cells = score_candidates(tiny_fit_run, 6, seed=3)
    assert list(cells)[:2] == ["alpha", "candidate-1"] and len(cells) == 7
    assert cells == score_candidates(tiny_fit_run, 6, seed=3) != score_candidates(tiny_fit_run, 6, seed=4)
    pool = [json.dumps(a, sort_keys=True) for _, a in architectures((), 10, (), 0)]
    assert not any(json.dumps(c, sort_keys=True) in pool for c in cells.values())

    # a known score: a cell is worth its number of sep_conv_3x3 edges in the normal cell (per task, + noise
    # that is the same for every cell); the kept cell must be the candidate with the most
    def fake_scores(meta, z_normal, z_reduce, task_batches, *args):
        n = sum(b.support_x.shape[0] for b in task_batches)
        count = float(z_normal[:, OPS.index("sep_conv_3x3")].sum())
        acc = torch.full((n,), count / 8) + 0.001 * torch.arange(n)
        return -acc, acc

    monkeypatch.setattr(score, "architecture_scores", fake_scores)
    out = tmp_path / "cell.json"
    result = CliRunner().invoke(main, ["derive-cell", tiny_fit_run, "--by", "score", "--candidates", "6", "--tasks",
                                       "3", "--seed", "3", "--no-plot", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "best of 7 cells" in result.output
    counts = {label: sum(op == "sep_conv_3x3" for op, _ in c["normal"]) for label, c in cells.items()}
    saved = json.loads((tmp_path / "score.json").read_text())
    assert counts[saved["kept"]] == max(counts.values())
    assert genotype_to_dict(load_genotype(out)) == cells[saved["kept"]]
    assert len(saved["scores"]) == 7 and all(len(s["accuracy"]) == 3 for s in saved["scores"])
    second = sorted(counts.values())[-2]
    assert saved["difference"] == pytest.approx((max(counts.values()) - second) / 8)


def test_derive_cell_by_score_scores_for_real(tiny_fit_run, tmp_path):
    from bayesnas.analysis import derive_cell

    cell = derive_cell(tiny_fit_run, by="score", candidates=2, evidence_tasks=2, out=tmp_path / "g.json", plot=False)
    scores = {s.label: s for s in cell.scores.scores}
    assert set(scores) == {"alpha", "candidate-1", "candidate-2"}
    best = max(scores.values(), key=lambda s: (s.mean_accuracy, s.mean_loglik))
    assert genotype_to_dict(cell.genotype) == best.genotype
    assert all(0.0 <= a <= 1.0 for s in scores.values() for a in s.accuracy)
    bad = CliRunner().invoke(main, ["derive-cell", tiny_fit_run, "--by", "score", "--task-seed", "1"])
    assert bad.exit_code != 0 and "takes no task_seed" in bad.output and "Traceback" not in bad.output


@pytest.mark.parametrize("by", ["score", "evidence"])
def test_an_output_that_cannot_be_written_is_refused_before_any_scoring(tiny_fit_run, tmp_path, monkeypatch, by):
    import bayesnas.analysis.derive as derive

    def never(*args, **kwargs):
        raise AssertionError("scored although the output cannot be written")

    monkeypatch.setattr(derive, "score_cells", never)
    monkeypatch.setattr(derive, "derive_by_evidence", never)
    (tmp_path / "a_file").write_text("x")
    out = tmp_path / "a_file" / "cell.json"
    result = CliRunner().invoke(main, ["derive-cell", tiny_fit_run, "--by", by, "--no-plot", "--out", str(out)])
    assert result.exit_code != 0 and "a_file is not a folder" in result.output and str(out) in result.output
    assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1, result.output
    with pytest.raises(WriteError, match="is a folder, expected the path of a file"):  # the CLI's Path type says so too
        derive.derive_cell(tiny_fit_run, by=by, out=tmp_path, plot=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file"]
