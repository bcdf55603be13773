"""Genotypes (discrete cells) as plain data, the cell's edge indexing, and JSON io.

A cell has 2 input nodes (0, 1: the outputs of the two previous cells) and ``STEPS = 4``
intermediate nodes. Intermediate node ``k`` (0-based; it is state ``k + 2``) receives
one edge from every earlier state ``j = 0 .. k + 1``; its edge index is
``offset_k + j`` with offsets 0, 2, 5, 9, so a cell has ``NUM_EDGES = 14`` edges and an
architecture tensor is ``[14, NUM_OPS]``, one row per edge in that order.

A genotype keeps two edges per node: ``normal`` and ``reduce`` are lists of
``2 * STEPS = 8`` pairs ``(op_name, input_index)``, node by node; ``*_concat`` lists the
states (2 .. 5) concatenated into the cell's output.

Example:

>>> g = named_genotype("darts_v2")
>>> genotype_from_dict(genotype_to_dict(g)) == g
True
>>> edge_index(2, 1), EDGES[edge_index(2, 1)], state_name(3)
(4, (2, 1), 'n1')
"""
import os
import random
from collections import namedtuple
from typing import Any

from ..errors import GenotypeError
from ..fileio import read_json, write_json
from .operations import OPS

STEPS = 4


def cell_edges(steps: int = STEPS) -> list[tuple[int, int]]:
    """The ``(source, target_node)`` pair of every edge of a cell, in edge-index order.

    ``source`` is a state (0, 1: cell inputs; ``j >= 2``: intermediate node ``j - 2``),
    ``target_node`` an intermediate node 0 .. steps-1. Length ``steps * (steps + 3) // 2``.
    """
    return [(j, k) for k in range(steps) for j in range(k + 2)]


def num_edges(steps: int = STEPS) -> int:
    """Edges of a cell with ``steps`` intermediate nodes: ``steps * (steps + 3) // 2`` (14 for 4)."""
    return steps * (steps + 3) // 2


EDGES = cell_edges(STEPS)
NUM_EDGES = num_edges(STEPS)

#: the two cell types, in the order of every per-cell pair (architecture tensors, genotypes)
CELL_TYPES = ("normal", "reduce")
CELL_TITLES = {"normal": "normal cell", "reduce": "reduction cell"}


def edge_index(source: int, node: int, steps: int = STEPS) -> int:
    """Row of the architecture tensor for the edge ``source -> node`` (``offset_node + source``).
    """
    if not 0 <= node < steps or not 0 <= source <= node + 1:
        raise ValueError(f"no edge {source} -> node {node} in a {steps}-node cell")
    return node * (node + 3) // 2 + source


def state_name(state: int) -> str:
    """Display name of a cell state: 0 -> ``c_{k-2}``, 1 -> ``c_{k-1}``, ``j >= 2`` -> ``n{j-2}``."""
    return ("c_{k-2}", "c_{k-1}")[state] if state < 2 else f"n{state - 2}"


def node_lines(pairs):
    """One line per intermediate node of a cell's 8 ``(op, input)`` pairs: ``n0 <- op(c_{k-2}) + op(c_{k-1})``."""
    return [f"n{i // 2} <- " + " + ".join(f"{op}({state_name(src)})" for op, src in pairs[i:i + 2])
            for i in range(0, len(pairs), 2)]


class Genotype(namedtuple("Genotype", ["normal", "normal_concat", "reduce", "reduce_concat"])):
    """A discrete cell pair: ``normal``/``reduce`` are 8 ``(op_name, input_index)`` pairs.

    Pairs ``2k`` and ``2k + 1`` are the two inputs of intermediate node ``k``; an input
    index is a state (0, 1: cell inputs, ``j >= 2``: node ``j - 2``). ``*_concat`` lists
    the states whose outputs are concatenated into the cell output.
    """

    __slots__ = ()


DARTS_V2 = Genotype(
    normal=[
        ("sep_conv_3x3", 0), ("sep_conv_3x3", 1),
        ("sep_conv_3x3", 0), ("sep_conv_3x3", 1),
        ("sep_conv_3x3", 1), ("skip_connect", 0),
        ("skip_connect", 0), ("dil_conv_3x3", 2),
    ],
    normal_concat=[2, 3, 4, 5],
    reduce=[
        ("max_pool_3x3", 0), ("max_pool_3x3", 1),
        ("skip_connect", 2), ("max_pool_3x3", 1),
        ("max_pool_3x3", 0), ("skip_connect", 2),
        ("skip_connect", 2), ("max_pool_3x3", 1),
    ],
    reduce_concat=[2, 3, 4, 5],
)

NAMED_GENOTYPES = {"darts_v2": DARTS_V2}


def _check_cell(pairs, concat, which, source, steps):
    where = f"{source}: {which}"
    if not isinstance(pairs, (list, tuple)):
        raise GenotypeError(f"{where}: expected a list of {2 * steps} (op, input) pairs, "
                            f"got {type(pairs).__name__}")
    if len(pairs) != 2 * steps:
        raise GenotypeError(f"{where}: expected {2 * steps} (op, input) pairs "
                            f"(2 per node, {steps} nodes), got {len(pairs)}")
    for i, pair in enumerate(pairs):
        node = i // 2
        if not isinstance(pair, (list, tuple)) or len(pair) != 2:
            raise GenotypeError(f"{where}[{i}]: expected an (op, input) pair, got {pair!r}")
        op, inp = pair
        if op not in OPS:
            raise GenotypeError(f"{where}[{i}]: unknown operation {op!r}: expected one of "
                                f"{', '.join(OPS[1:])}")
        if op == "none":
            raise GenotypeError(f"{where}[{i}]: 'none' cannot be a kept operation "
                                f"(node {node} must take two real inputs)")
        if isinstance(inp, bool) or not isinstance(inp, int) or not 0 <= inp <= node + 1:
            raise GenotypeError(f"{where}[{i}]: input {inp!r} out of range for node {node}: "
                                f"expected an integer in 0..{node + 1}")
    for node in range(steps):
        a, b = pairs[2 * node][1], pairs[2 * node + 1][1]
        if a == b:
            raise GenotypeError(f"{where}: node {node} takes both inputs from state {a}: "
                                f"its two inputs must come from different states")
    label = f"{source}: {which}_concat"
    if not isinstance(concat, (list, tuple)) or not concat:
        raise GenotypeError(f"{label}: expected a non-empty list of states in 2..{steps + 1}, "
                            f"got {concat!r}")
    for c in concat:
        if isinstance(c, bool) or not isinstance(c, int) or not 2 <= c <= steps + 1:
            raise GenotypeError(f"{label}: state {c!r} is not an intermediate node: "
                                f"expected integers in 2..{steps + 1}")
    if len(set(concat)) != len(concat):
        raise GenotypeError(f"{label}: repeated state in {list(concat)}")


def validate_genotype(g: Any, source: str = "<genotype>", steps: int = STEPS) -> "Genotype":
    """Check ``g`` and return it; raise :class:`GenotypeError` naming ``source`` otherwise.

    Checks: 8 pairs per cell; every op known and not ``none``; each input index in
    ``0 .. k+1`` for its node ``k``; a node's two inputs from different states; concat a
    non-empty list of distinct states in 2..5.
    """
    if not isinstance(g, Genotype):
        raise GenotypeError(f"{source}: expected a Genotype, got {type(g).__name__}")
    _check_cell(g.normal, g.normal_concat, "normal", source, steps)
    _check_cell(g.reduce, g.reduce_concat, "reduce", source, steps)
    return g


def genotype_to_dict(g: "Genotype") -> dict:
    """A JSON-ready dict: ``{"normal": [[op, input], ...], "normal_concat": [...], ...}``.
    """
    return {
        "normal": [[op, int(i)] for op, i in g.normal],
        "normal_concat": [int(c) for c in g.normal_concat],
        "reduce": [[op, int(i)] for op, i in g.reduce],
        "reduce_concat": [int(c) for c in g.reduce_concat],
    }


def genotype_from_dict(d: Any, source: str = "<genotype>") -> "Genotype":
    """Inverse of :func:`genotype_to_dict`; validates, errors name ``source``.

    Pairs become tuples and lists stay lists, so the result compares equal to the
    genotype that was saved.
    """
    if not isinstance(d, dict):
        raise GenotypeError(f"{source}: expected a JSON object with keys normal, normal_concat, "
                            f"reduce, reduce_concat; got {type(d).__name__}")
    missing = [k for k in Genotype._fields if k not in d]
    if missing:
        raise GenotypeError(f"{source}: missing key(s) {', '.join(missing)} "
                            f"(expected {', '.join(Genotype._fields)})")

    def pairs(which):
        value = d[which]
        if not isinstance(value, list):
            raise GenotypeError(f"{source}: {which}: expected a list of (op, input) pairs, "
                                f"got {type(value).__name__}")
        return [tuple(p) if isinstance(p, list) else p for p in value]

    g = Genotype(pairs("normal"), d["normal_concat"], pairs("reduce"), d["reduce_concat"])
    return validate_genotype(g, source)


def save_genotype(g: "Genotype", path: str | os.PathLike) -> None:
    """Validate ``g`` and write it to ``path`` as JSON, atomically (temp file, then rename).
    """
    validate_genotype(g, source=os.fspath(path))
    write_json(path, genotype_to_dict(g))


def load_genotype(path: str | os.PathLike) -> "Genotype":
    """Read and validate a genotype JSON file written by :func:`save_genotype`.

    A missing file, invalid JSON, missing keys or an invalid cell raise
    :class:`GenotypeError` naming the file.
    """
    path = os.fspath(path)
    if not os.path.lexists(path):
        raise GenotypeError(f"{path}: genotype file not found")
    return genotype_from_dict(read_json(path, GenotypeError, "genotype JSON file"), source=path)


def random_genotype(rng: random.Random | int | None = None, steps: int = STEPS) -> "Genotype":
    """Draw a valid genotype uniformly from the space.

    Each node gets two distinct input states (uniform over unordered pairs, listed in
    increasing order) and a uniform non-``none`` operation on each kept edge; both cells
    concatenate all intermediate nodes. ``rng`` is a :class:`random.Random`, an int seed
    or None (fresh randomness).
    """
    if not isinstance(rng, random.Random):
        rng = random.Random(rng)
    ops = OPS[1:]

    def cell():
        pairs = []
        for node in range(steps):
            for j in sorted(rng.sample(range(node + 2), 2)):
                pairs.append((rng.choice(ops), j))
        return pairs

    concat = list(range(2, steps + 2))
    return Genotype(cell(), list(concat), cell(), list(concat))


def kept_choices(g: "Genotype") -> set[tuple[str, int, int, str]]:
    """The kept ``(cell type, node, source state, op)`` choices of a genotype: 16 for 4 nodes."""
    return {(which, i // 2, int(source), op)
            for which, pairs in (("normal", g.normal), ("reduce", g.reduce))
            for i, (op, source) in enumerate(pairs)}


def genotype_agreement(a: "Genotype", b: "Genotype") -> float:
    """The share of ``a``'s kept ``(cell type, node, source, op)`` choices that ``b`` makes too.

    Both cells keep the same number of edges (two per node), so the share is symmetric: 1
    for equal cells, 0 when no kept edge carries the same op in both. Two cells drawn by
    :func:`random_genotype` share 7.1% of them in expectation (:func:`random_agreement`): the
    other cell keeps a given edge into node i with probability 2 / (i + 2) and gives it the same
    of the 9 ops with probability 1/9.
    """
    ka, kb = kept_choices(a), kept_choices(b)
    if len(ka) != len(kb):
        raise ValueError(f"genotype_agreement needs cells with as many kept edges, got {len(ka)} and {len(kb)}")
    return len(ka & kb) / len(ka)


def random_agreement(draws: int = 10000, seed: int = 0) -> float:
    """The mean :func:`genotype_agreement` of ``draws`` pairs of :func:`random_genotype` cells (chance)."""
    rng = random.Random(seed)
    return sum(genotype_agreement(random_genotype(rng), random_genotype(rng)) for _ in range(draws)) / draws


def named_genotype(name: str) -> "Genotype":
    """The published genotype called ``name`` (case-insensitive): ``"darts_v2"``.
    """
    key = str(name).strip().lower()
    if key not in NAMED_GENOTYPES:
        raise GenotypeError(f"unknown genotype name {name!r}: expected one of "
                            f"{', '.join(sorted(NAMED_GENOTYPES))}")
    return NAMED_GENOTYPES[key]


def genotype_string(g: "Genotype") -> str:
    """A genotype on one line, e.g. for a column of ``metrics.csv``.

    Each cell lists its nodes as ``nK=op(source)+op(source)`` (sources are states: 0, 1
    the cell inputs, ``j >= 2`` node ``j - 2``). A cell's concat list is appended
    (``concat=2,3``) only when it is not every intermediate node, which a derived
    genotype always is. Equal genotypes give equal strings and unequal ones unequal.
    """
    cells = []
    for which, pairs, concat in (("normal", g.normal, g.normal_concat), ("reduce", g.reduce, g.reduce_concat)):
        nodes = [f"n{i // 2}=" + "+".join(f"{op}({int(source)})" for op, source in pairs[i:i + 2])
                 for i in range(0, len(pairs), 2)]
        if list(concat) != list(range(2, len(pairs) // 2 + 2)):
            nodes.append("concat=" + ",".join(str(int(s)) for s in concat))
        cells.append(" ".join([which] + nodes))
    return "; ".join(cells)


#: Architecture names that ``retrain`` accepts besides a genotype.
BASELINES = ("conv4",) + tuple(sorted(NAMED_GENOTYPES))


def arch_config(spec: Any) -> str | dict:
    """The JSON-ready form of an architecture: ``"conv4"``, ``"darts_v2"`` or a genotype dict.

    Args:
        spec: a :class:`~bayesnas.models.genotypes.Genotype`; a genotype dict; a name in
            :data:`BASELINES` (any case); a path to a genotype JSON file; or a fit run
            folder holding ``genotype.json`` (``bayesnas derive-cell`` writes it).
    """
    if isinstance(spec, Genotype):
        return genotype_to_dict(genotype_from_dict(genotype_to_dict(spec)))
    if isinstance(spec, dict):
        return genotype_to_dict(genotype_from_dict(spec, source="arch"))
    if isinstance(spec, (str, os.PathLike)):
        text = os.fspath(spec)
        if text.strip().lower() in BASELINES:
            return text.strip().lower()
        if os.path.isdir(text):
            path = os.path.join(text, "genotype.json")
            if not os.path.exists(path):
                raise GenotypeError(f"{text}: folder holds no genotype.json; run 'bayesnas derive-cell {text}' "
                                    f"first, or give a genotype JSON file")
            return genotype_to_dict(load_genotype(path))
        if os.path.exists(text):
            return genotype_to_dict(load_genotype(text))
        raise GenotypeError(f"{text}: not a genotype JSON file, a run folder holding genotype.json, or a "
                            f"known architecture ({', '.join(BASELINES)})")
    raise GenotypeError(f"architecture {spec!r}: expected a Genotype, a genotype dict, a JSON path or one of "
                        f"{', '.join(BASELINES)}")


def arch_label(arch: Any) -> str:
    """A short display name of an architecture config value: the name, or "genotype"."""
    return arch if isinstance(arch, str) else "genotype"
