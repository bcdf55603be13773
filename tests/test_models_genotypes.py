"""Genotypes: edge indexing, validation of every invalid case, JSON io, random draws."""
import json
import os
import random

import pytest

from bayesnas.errors import GenotypeError
from bayesnas.models.genotypes import (
    DARTS_V2,
    EDGES,
    NUM_EDGES,
    Genotype,
    edge_index,
    genotype_agreement,
    genotype_from_dict,
    genotype_to_dict,
    load_genotype,
    named_genotype,
    random_agreement,
    random_genotype,
    save_genotype,
    validate_genotype,
)
from bayesnas.models.operations import OPS


def test_edge_indexing():
    assert NUM_EDGES == 14 and len(EDGES) == 14
    offsets = [0, 2, 5, 9]
    for k in range(4):
        for j in range(k + 2):
            assert EDGES[offsets[k] + j] == (j, k)
            assert edge_index(j, k) == offsets[k] + j
    with pytest.raises(ValueError):
        edge_index(3, 1)


def test_darts_v2_is_the_published_cell():
    assert validate_genotype(DARTS_V2) is DARTS_V2
    assert DARTS_V2.normal[7] == ("dil_conv_3x3", 2)
    assert DARTS_V2.reduce[2] == ("skip_connect", 2)
    assert DARTS_V2.normal_concat == [2, 3, 4, 5] == DARTS_V2.reduce_concat
    assert named_genotype("darts_v2") is DARTS_V2
    assert named_genotype(" DARTS_V2 ") is DARTS_V2
    with pytest.raises(GenotypeError, match="darts_v2"):
        named_genotype("darts_v9")


def _with(**changes):
    d = genotype_to_dict(DARTS_V2)
    for key, fn in changes.items():
        d[key] = fn(d[key])
    return d


def _set(i, value):
    def fn(pairs):
        pairs = [list(p) for p in pairs]
        pairs[i] = value
        return pairs
    return fn


INVALID = [
    ("unknown op", _with(normal=_set(0, ["sep_conv_9x9", 0])), "unknown operation 'sep_conv_9x9'"),
    ("none op", _with(reduce=_set(3, ["none", 1])), "'none' cannot be a kept operation"),
    ("too few pairs", _with(normal=lambda p: p[:7]), "expected 8 .* got 7"),
    ("too many pairs", _with(reduce=lambda p: p + [["skip_connect", 0]]), "expected 8 .* got 9"),
    ("index out of range", _with(normal=_set(2, ["sep_conv_3x3", 3])), "input 3 out of range for node 1"),
    ("negative index", _with(normal=_set(0, ["sep_conv_3x3", -1])), "input -1 out of range for node 0"),
    ("non-int index", _with(normal=_set(0, ["sep_conv_3x3", "0"])), "out of range for node 0"),
    ("bool index", _with(normal=_set(1, ["sep_conv_3x3", True])), "out of range for node 0"),
    ("same source twice", _with(normal=_set(1, ["sep_conv_5x5", 0])), "node 0 takes both inputs from state 0"),
    ("bad pair", _with(normal=_set(0, ["sep_conv_3x3"])), r"expected an \(op, input\) pair"),
    ("concat out of range", _with(normal_concat=lambda c: [1, 2, 3]), "normal_concat: state 1"),
    ("concat too big", _with(reduce_concat=lambda c: [2, 6]), "reduce_concat: state 6"),
    ("concat repeated", _with(normal_concat=lambda c: [2, 2, 3]), "repeated state"),
    ("concat empty", _with(reduce_concat=lambda c: []), "non-empty list"),
    ("cell not a list", _with(normal=lambda p: "sep_conv_3x3"), "expected a list"),
]


@pytest.mark.parametrize("case,d,message", INVALID, ids=[c[0] for c in INVALID])
def test_invalid_genotypes_name_source_and_problem(case, d, message):
    with pytest.raises(GenotypeError, match=message) as info:
        genotype_from_dict(d, source="cells.json")
    assert str(info.value).startswith("cells.json")


def test_validate_rejects_non_genotype():
    with pytest.raises(GenotypeError, match="my source: expected a Genotype"):
        validate_genotype({"normal": []}, source="my source")


def test_missing_keys():
    d = genotype_to_dict(DARTS_V2)
    del d["reduce_concat"]
    with pytest.raises(GenotypeError, match="missing key.*reduce_concat"):
        genotype_from_dict(d, source="x.json")
    with pytest.raises(GenotypeError, match="JSON object"):
        genotype_from_dict([1, 2], source="x.json")


def test_json_round_trip(tmp_path):
    path = tmp_path / "run" / "genotype.json"
    save_genotype(DARTS_V2, path)
    assert load_genotype(path) == DARTS_V2
    assert load_genotype(str(path)) == DARTS_V2
    assert json.loads(path.read_text())["normal"][0] == ["sep_conv_3x3", 0]
    assert os.listdir(path.parent) == ["genotype.json"]   # no temp file left behind
    g = random_genotype(3)
    save_genotype(g, path)
    assert load_genotype(path) == g


def test_save_refuses_invalid(tmp_path):
    bad = DARTS_V2._replace(normal=DARTS_V2.normal[:6])
    with pytest.raises(GenotypeError, match="bad.json"):
        save_genotype(bad, tmp_path / "bad.json")
    assert not (tmp_path / "bad.json").exists()


def test_load_errors_name_the_file(tmp_path):
    missing = tmp_path / "nope.json"
    with pytest.raises(GenotypeError, match="nope.json: genotype file not found"):
        load_genotype(missing)
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(GenotypeError, match="bad.json: not valid JSON"):
        load_genotype(bad)
    keys = tmp_path / "keys.json"
    keys.write_text(json.dumps({"normal": []}))
    with pytest.raises(GenotypeError, match="keys.json: missing key"):
        load_genotype(keys)
    with pytest.raises(GenotypeError, match="is a directory"):
        load_genotype(tmp_path)


def test_random_genotype_valid_deterministic_and_covering():
    assert random_genotype(7) == random_genotype(random.Random(7))
    rng = random.Random(0)
    seen_ops, seen_pairs = set(), set()
    for _ in range(300):
        g = validate_genotype(random_genotype(rng))
        assert isinstance(g, Genotype)
        for pairs in (g.normal, g.reduce):
            seen_ops.update(op for op, _ in pairs)
            seen_pairs.add((pairs[6][1], pairs[7][1]))
    assert seen_ops == set(OPS[1:])
    # node 3 chooses 2 of 5 states: all 10 unordered pairs occur, listed in order
    assert seen_pairs == {(a, b) for a in range(5) for b in range(a + 1, 5)}


def test_random_genotype_uniform_over_node_inputs():
    rng = random.Random(1)
    counts = {}
    n = 3000
    for _ in range(n):
        pair = tuple(j for _, j in random_genotype(rng).normal[2:4])
        counts[pair] = counts.get(pair, 0) + 1
    # node 1 picks 2 of 3 states: each pair with probability 1/3
    assert set(counts) == {(0, 1), (0, 2), (1, 2)}
    for c in counts.values():
        assert abs(c / n - 1 / 3) < 0.04


def test_genotype_string_is_one_line_and_tells_genotypes_apart():
    from bayesnas.models.genotypes import genotype_string

    text = genotype_string(DARTS_V2)
    assert text == ("normal n0=sep_conv_3x3(0)+sep_conv_3x3(1) n1=sep_conv_3x3(0)+sep_conv_3x3(1) "
                    "n2=sep_conv_3x3(1)+skip_connect(0) n3=skip_connect(0)+dil_conv_3x3(2); "
                    "reduce n0=max_pool_3x3(0)+max_pool_3x3(1) n1=skip_connect(2)+max_pool_3x3(1) "
                    "n2=max_pool_3x3(0)+skip_connect(2) n3=skip_connect(2)+max_pool_3x3(1)")
    assert "," not in text and "\n" not in text  # one plain CSV cell
    draws = [random_genotype(seed) for seed in range(50)]
    assert len({genotype_string(g) for g in draws}) == len(set(map(str, draws)))
    partial = DARTS_V2._replace(reduce_concat=[2, 5])
    assert genotype_string(partial).endswith(" concat=2,5")


def test_agreement_counts_shared_node_source_op_choices():
    a = random_genotype(1)
    assert genotype_agreement(a, a) == 1.0
    # change one op of the normal cell and both sources of the reduction cell's last node
    normal = list(a.normal)
    op, source = normal[0]
    normal[0] = (next(o for o in OPS[1:] if o != op), source)
    b = a._replace(normal=normal)
    assert genotype_agreement(a, b) == genotype_agreement(b, a) == 15 / 16
    reduce = list(a.reduce)
    reduce[6:8] = [(reduce[6][0], s) for s in range(5) if s not in {reduce[6][1], reduce[7][1]}][:2]
    c = b._replace(reduce=reduce)
    assert genotype_agreement(a, c) == 13 / 16
    # a choice counts in its own cell type only
    d = a._replace(reduce=a.normal)
    assert genotype_agreement(a, d) == genotype_agreement(a._replace(normal=a.reduce), a) < 1.0


def test_random_cells_agree_at_the_rate_the_space_implies():
    # a kept edge into node i is kept by another random cell with probability 2 / (i + 2), with its op 1/9
    expected = sum(2 * 2 / (i + 2) / 9 for i in range(4)) / 8
    assert abs(random_agreement(20000) - expected) < 0.004
