"""Build a pool file of retrained random cells from compare results of one protocol (issue 24, part 5).

    python benchmarks/build_pool.py --compare benchmarks/results/compare_omniglot.json --setting "5-way 1-shot" \
        --extra runs/pool/rows_6_10.json --out benchmarks/results/pool_omniglot_5w1s.json

``--compare`` is the comparison benchmark's report (one result per setting); ``--extra`` takes
``compare.json`` files (``CompareResult.to_dict()``) of further random cells retrained under
the same protocol (a difference is refused, naming it); a row labelled ``random-N`` there
counts as a random cell when it holds the N-th cell of compare's random stream (seed 0). The pool then serves
``bayesnas compare --pool FILE``: a new cell is placed among the pool's cells without
retraining them. ``--standings JSON`` also places the setting's other rows (searched cells,
DARTS_V2, Conv-4) in the pool (:func:`bayesnas.analysis.pool.standing`) and writes them there.
"""
import argparse
import json

from bayesnas.analysis.compare import architectures
from bayesnas.analysis.pool import format_standings, pool_from_results, save_pool, standing
from bayesnas.fileio import write_json


def main(args):
    results = []
    if args.compare:
        report = json.load(open(args.compare))
        results += [s["result"] for s in report["settings"] if s["name"] == args.setting]
        if not results:
            raise SystemExit(f"{args.compare}: no setting {args.setting!r}")
    for path in args.extra:
        result = json.load(open(path))
        for row in result["rows"]:
            # cells retrained by giving compare the random stream's cells as genotypes (to train only some
            # of them) are labelled searched there: they are random cells when they are the stream's own
            stream = dict(architectures((), random_cells=int(row["label"].split("-")[-1]), baselines=()))
            if row["label"].startswith("random-") and stream.get(row["label"]) == row["arch"]:
                row["kind"] = "random"
        results.append(result)
    pool = pool_from_results(results)
    save_pool(pool, args.out)
    print(f"{args.out}: {len(pool['rows'])} random cells: "
          + ", ".join(f"{r['label']} {100 * r['accuracy']:.2f}%" for r in pool["rows"]))
    if args.standings:
        pooled = {r["label"] for r in pool["rows"]}
        others = [r for result in results for r in result["rows"] if r["label"] not in pooled]
        standings = [standing(r["label"], r["accuracies"], pool) for r in others]
        print(format_standings(standings))
        write_json(args.standings, {"pool": args.out, "setting": args.setting,
                                    "standings": [s._asdict() for s in standings]})
    return pool


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--compare", default=None, help="the comparison benchmark's report")
    p.add_argument("--setting", default="5-way 1-shot")
    p.add_argument("--extra", action="append", default=[], help="a compare.json of more random cells (repeat)")
    p.add_argument("--out", required=True)
    p.add_argument("--standings", default=None, help="also write the other rows' standings in the pool here")
    return p.parse_args(argv)


if __name__ == "__main__":
    main(parse())
