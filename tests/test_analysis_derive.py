"""Deriving a cell: hand-made probabilities with known answers, ties, the distinct-source rule."""
import json

import pytest
import torch

from bayesnas.analysis.derive import chosen_edges_table, derive_cell, derive_genotype, format_edges_table
from bayesnas.config import FitConfig
from bayesnas.errors import ConfigError, GenotypeError
from bayesnas.models.genotypes import EDGES, Genotype, edge_index, load_genotype, validate_genotype
from bayesnas.models.operations import OPS
from bayesnas.training import fit

NONE, SKIP, MAX, AVG, SEP3, SEP5, SEP7, DIL3, DIL5, C71 = range(10)


def uniform():
    return torch.full((14, 10), 0.1, dtype=torch.float64)


def set_edge(probs, source, node, values):
    """Put ``values`` ({op: prob}) on edge source->node and spread the rest evenly over the other ops."""
    row = probs[edge_index(source, node)]
    rest = (1.0 - sum(values.values())) / (10 - len(values))
    row.fill_(rest)
    for op, p in values.items():
        row[op] = p


def test_known_answer_and_none_is_ignored():
    p = uniform()
    # node 0: source 1 strongest (sep 5x5), then source 0 (max pool)
    set_edge(p, 0, 0, {MAX: 0.3})
    set_edge(p, 1, 0, {SEP5: 0.5})
    # node 1: source 2 (= node 0) wins with dil 3x3; source 0 is mostly 'none' and must lose to source 1
    set_edge(p, 0, 1, {NONE: 0.9, SEP3: 0.02})
    set_edge(p, 1, 1, {AVG: 0.2})
    set_edge(p, 2, 1, {DIL3: 0.6})
    # node 2: sources 3 and 0
    set_edge(p, 0, 2, {C71: 0.35})
    set_edge(p, 3, 2, {SEP7: 0.4})
    # node 3: sources 4 and 2
    set_edge(p, 2, 3, {SKIP: 0.7})
    set_edge(p, 4, 3, {DIL5: 0.75})
    g = derive_genotype(p, uniform())
    assert g.normal == [("max_pool_3x3", 0), ("sep_conv_5x5", 1),
                        ("avg_pool_3x3", 1), ("dil_conv_3x3", 2),
                        ("conv_7x1_1x7", 0), ("sep_conv_7x7", 3),
                        ("skip_connect", 2), ("dil_conv_5x5", 4)]
    assert g.normal_concat == g.reduce_concat == [2, 3, 4, 5]
    validate_genotype(g)
    rows = chosen_edges_table(p, uniform(), g)
    assert len(rows) == 16 and [r.cell for r in rows] == ["normal"] * 8 + ["reduce"] * 8
    assert [(r.node, r.source, r.op) for r in rows[:8]] == [(i // 2, s, op) for i, (op, s) in enumerate(g.normal)]
    assert [round(r.prob, 6) for r in rows[:8]] == [0.3, 0.5, 0.2, 0.6, 0.35, 0.4, 0.7, 0.75]
    text = format_edges_table(rows)
    assert "sep_conv_5x5" in text and "0.750" in text and len(text.splitlines()) == 17


def test_two_strong_ops_on_one_edge_keep_only_one_source():
    p = uniform()
    # node 3: the edge from node 0 (state 2) carries the two most probable ops of the node;
    # ranking (edge, op) pairs naively would keep state 2 twice.
    set_edge(p, 2, 3, {SEP3: 0.45, SEP5: 0.44})
    set_edge(p, 0, 3, {MAX: 0.2})
    set_edge(p, 1, 3, {AVG: 0.15})
    set_edge(p, 3, 3, {DIL3: 0.3})
    set_edge(p, 4, 3, {SKIP: 0.12})
    g = derive_genotype(p, p)
    assert g.normal[6:] == [("sep_conv_3x3", 2), ("dil_conv_3x3", 3)]
    assert g.reduce[6:] == g.normal[6:]
    for cell in (g.normal, g.reduce):
        for node in range(4):
            assert cell[2 * node][1] != cell[2 * node + 1][1]


def test_ties_are_broken_by_op_order_then_by_lower_source():
    # all uniform: every op ties on every edge, every edge ties within a node
    g = derive_genotype(uniform(), torch.softmax(torch.zeros(14, 10), -1))
    expected = [("skip_connect", 0), ("skip_connect", 1)] * 4
    assert g.normal == expected and g.reduce == expected
    p = uniform()
    # op tie inside an edge: dil_conv_5x5 and sep_conv_7x7 equal -> sep_conv_7x7 (earlier in OPS)
    set_edge(p, 1, 2, {DIL5: 0.3, SEP7: 0.3})
    # edge tie across sources: sources 1, 2 and 3 of node 2 all reach 0.3
    set_edge(p, 3, 2, {AVG: 0.3})
    set_edge(p, 2, 2, {MAX: 0.3})
    g = derive_genotype(p, uniform())
    # node 2 has three edges at strength 0.3 (sources 1, 2, 3): the two lowest sources win
    assert g.normal[4:6] == [("sep_conv_7x7", 1), ("max_pool_3x3", 2)]
    assert OPS.index("sep_conv_7x7") < OPS.index("dil_conv_5x5")


def test_one_hot_rows_with_none_drawn():
    # hard categorical draws (EdgePosterior.sample(tau=0)): 'none' drawn on some edges
    p = torch.zeros(14, 10)
    p[:, NONE] = 1.0
    p[edge_index(1, 3)] = 0.0
    p[edge_index(1, 3), SEP3] = 1.0
    g = derive_genotype(p, p)
    # node 3: source 1 drew a real op; the other slot goes to the lowest source (all strength 0)
    assert g.normal[6:] == [("skip_connect", 0), ("sep_conv_3x3", 1)]
    assert g.normal[:2] == [("skip_connect", 0), ("skip_connect", 1)]


def test_matches_an_independent_vectorised_rule_on_random_probabilities():
    gen = torch.Generator().manual_seed(0)
    for _ in range(50):
        pn = torch.softmax(3 * torch.randn(14, 10, generator=gen), -1)
        pr = torch.softmax(3 * torch.randn(14, 10, generator=gen), -1)
        g = derive_genotype(pn, pr)
        for probs, cell in ((pn, g.normal), (pr, g.reduce)):
            strength, best = probs[:, 1:].max(-1)
            for node in range(4):
                rows = [e for e, (s, t) in enumerate(EDGES) if t == node]
                top = strength[rows].topk(2).indices.tolist()
                want = sorted((EDGES[rows[i]][0], OPS[1 + best[rows[i]].item()]) for i in top)
                assert [(s, op) for op, s in cell[2 * node:2 * node + 2]] == want


@pytest.mark.parametrize("bad, message", [
    (torch.full((14, 9), 1 / 9), "shape"),
    (torch.zeros(14, 10), "probabilities"),
    (torch.randn(14, 10), "logits"),
])
def test_bad_probabilities_are_named(bad, message):
    with pytest.raises(GenotypeError, match=message):
        derive_genotype(bad, uniform())


@pytest.fixture(scope="module")
def fit_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("derive") / "fit"
    torch.set_num_threads(1)
    cfg = FitConfig(iterations=1, channels=2, cells=2, queries=2, inner_steps=1, val_every=1, val_tasks=2,
                    val_samples=1, threads=1)
    fit(cfg, out=str(out), progress=False)
    return out


def test_derive_cell_writes_the_meta_level_genotype_and_a_picture(fit_run):
    from bayesnas.training.search import load_fit

    cell = derive_cell(fit_run)
    assert cell.genotype_path == str(fit_run / "genotype.json")
    assert load_genotype(cell.genotype_path) == cell.genotype
    _, meta, _ = load_fit(fit_run)
    assert cell.genotype == derive_genotype(meta.alpha_normal.softmax(-1), meta.alpha_reduce.softmax(-1))
    assert torch.allclose(cell.probs_normal, meta.alpha_normal.detach().softmax(-1))
    with open(cell.plot_path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert json.load(open(cell.genotype_path))["normal_concat"] == [2, 3, 4, 5]


def test_derive_cell_adapted_to_a_task_is_reproducible_and_moves_the_posterior(fit_run, tmp_path):
    a = derive_cell(fit_run, task_seed=3, plot=False)
    b = derive_cell(fit_run, task_seed=3, out=tmp_path / "g.json", plot=tmp_path / "g.pdf")
    assert a.genotype_path == str(fit_run / "genotype-task3.json") and a.plot_path is None
    assert torch.equal(a.probs_normal, b.probs_normal) and a.genotype == b.genotype
    assert (tmp_path / "g.pdf").read_bytes()[:4] == b"%PDF"
    meta_level = derive_cell(fit_run, plot=False)
    assert not torch.allclose(a.probs_normal, meta_level.probs_normal, atol=1e-6)
    assert torch.allclose(a.probs_normal.sum(-1), torch.ones(14, dtype=a.probs_normal.dtype), atol=1e-5)
    assert isinstance(a.genotype, Genotype)


def test_derive_cell_adapts_to_a_validation_task_unless_told_otherwise(fit_run, monkeypatch):
    import bayesnas.analysis.derive as derive
    from bayesnas.data import load_default

    splits = []
    real_sampler = derive.TaskSampler

    def spy(split, *args, **kwargs):
        splits.append(split)
        return real_sampler(split, *args, **kwargs)

    monkeypatch.setattr(derive, "TaskSampler", spy)
    val = derive_cell(fit_run, task_seed=2, plot=False)
    data = load_default()  # what fit_run trained on
    assert [s.name for s in splits] == ["val"] and splits[0].class_names == data.split("val").class_names
    assert val.task_split == "val" and val.genotype_path == str(fit_run / "genotype-task2.json")
    test = derive_cell(fit_run, task_seed=2, plot=False, task_split="test")
    assert splits[-1].name == "test" and test.genotype_path == str(fit_run / "genotype-task2-test.json")
    assert not torch.equal(val.probs_normal, test.probs_normal)
    assert derive_cell(fit_run, plot=False).task_split is None
    with pytest.raises(ConfigError, match="task_split='train'"):
        derive_cell(fit_run, task_seed=2, plot=False, task_split="train")
