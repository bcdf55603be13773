"""Do search seeds agree? Shared cell choices, and shared candidate rankings (issue 24).

    python benchmarks/seed_agreement.py \
        --cell s0=runs/frozen_s0/genotype-score.json --cell s1=runs/frozen_s1/genotype-score.json \
        --cell s2=runs/frozen_s2/genotype-score.json \
        --scores s0=runs/frozen_s0/score.json --scores s1=runs/frozen_s1/score.json \
        --scores s2=runs/frozen_s2/score.json --json benchmarks/results/agreement_frozen_ws.json

Cells: for each pair of cells, the share of the 16 kept (cell type, node, source, op) choices
both make (:func:`bayesnas.models.genotype_agreement`), their mean over pairs, and what two
random cells share (7.1%). Scores (``score.json`` of ``derive-cell --by score``): when the runs
scored the same candidate cells (the same ``--seed``, so the same random stream), the Kendall
tau-b between two meta-networks' mean accuracies over the random candidates (alpha's own cell,
which differs between runs, is left out), with a permutation p-value. Seeds whose meta-networks
rank the candidates alike make a choice that the data, not the seed, drives.
"""
import argparse
import itertools
import sys

from bayesnas.analysis.score import rank_correlation
from bayesnas.fileio import read_json, write_json
from bayesnas.models import genotype_agreement, genotype_from_dict, load_genotype, random_agreement


def _labelled(items, what):
    out = {}
    for item in items:
        label, sep, path = item.partition("=")
        if not sep or not label or not path:
            raise SystemExit(f"--{what} {item!r}: expected LABEL=PATH")
        out[label] = path
    return out


def cell_agreement(cells):
    """Pairwise agreement of ``{label: Genotype}``: ``{"pairs": {...}, "mean": ...}``."""
    pairs = {f"{a} vs {b}": genotype_agreement(cells[a], cells[b]) for a, b in itertools.combinations(cells, 2)}
    return {"pairs": pairs, "mean": sum(pairs.values()) / len(pairs) if pairs else None}


def score_agreement(scores):
    """Kendall tau between the candidates' mean accuracies of every pair of ``{label: score.json dict}``."""
    out = {}
    for a, b in itertools.combinations(scores, 2):
        ca = {s["label"]: s for s in scores[a]["scores"] if s["label"] != "alpha"}
        cb = {s["label"]: s for s in scores[b]["scores"] if s["label"] != "alpha"}
        common = [k for k in ca
                  if k in cb and genotype_from_dict(ca[k]["genotype"]) == genotype_from_dict(cb[k]["genotype"])]
        if len(common) < 3:
            out[f"{a} vs {b}"] = {"candidates": len(common), "note": "fewer than 3 shared candidate cells"}
            continue
        r = rank_correlation([ca[k]["mean_accuracy"] for k in common], [cb[k]["mean_accuracy"] for k in common])
        out[f"{a} vs {b}"] = {"candidates": len(common), "kendall": r.kendall, "kendall_p": r.kendall_p,
                              "spearman": r.spearman, "kept": [scores[a]["kept"], scores[b]["kept"]]}
    return out


def main(args):
    cells = {label: load_genotype(path) for label, path in _labelled(args.cell, "cell").items()}
    scores = {label: read_json(path, ValueError, "score JSON")
              for label, path in _labelled(args.scores, "scores").items()}
    report = {"command": " ".join(["python", *sys.argv]), "cells": cell_agreement(cells),
              "random_pair_agreement": random_agreement(args.draws), "scores": score_agreement(scores)}
    for pair, share in report["cells"]["pairs"].items():
        print(f"{pair:<40} {round(16 * share):>2} of 16 choices shared ({100 * share:.1f}%)")
    if report["cells"]["mean"] is not None:
        print(f"mean over pairs {100 * report['cells']['mean']:.1f}%, "
              f"two random cells {100 * report['random_pair_agreement']:.1f}%")
    for pair, r in report["scores"].items():
        if "kendall" in r:
            print(f"{pair:<40} Kendall {r['kendall']:+.2f} (p {r['kendall_p']:.3f}), Spearman {r['spearman']:+.2f} "
                  f"over {r['candidates']} candidates; kept {r['kept'][0]} and {r['kept'][1]}")
        else:
            print(f"{pair:<40} {r['note']}")
    if args.json:
        write_json(args.json, report)
    return report


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cell", action="append", default=[], help="LABEL=genotype JSON (repeat)")
    p.add_argument("--scores", action="append", default=[], help="LABEL=score.json of derive-cell --by score (repeat)")
    p.add_argument("--draws", type=int, default=20000, help="random cell pairs for the chance level")
    p.add_argument("--json", default=None)
    return p.parse_args(argv)


if __name__ == "__main__":
    main(parse())
