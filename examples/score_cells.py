"""Score DARTS_V2 and a few random cells with a fit run's meta-network (weight-sharing evaluation).

Each cell fixes the supernet's architecture; the run's guide adapts the weights to each of
the same held-out tasks and the cell is scored by the query log-likelihood and accuracy.
Without ``--run`` a tiny search is run first into a temporary folder (seconds, and its
meta-network has learned next to nothing: the scores then show the API, not a ranking).

    python examples/score_cells.py --run runs/omniglot --random 2 --tasks 20
"""
import argparse
import tempfile

from search_and_derive import run_or_tiny_search  # the sibling example

from bayesnas.analysis import score_cells


def main(args=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--run", default=None, help="a fit run folder (default: a tiny search in a temporary folder)")
    parser.add_argument("--random", type=int, default=2, help="random cells scored beside DARTS_V2")
    parser.add_argument("--tasks", type=int, default=4, help="held-out validation tasks, the same for every cell")
    parser.add_argument("--samples", type=int, default=2, help="posterior draws averaged per prediction")
    opts = parser.parse_args(args)

    with tempfile.TemporaryDirectory() as tmp:
        result = score_cells(run_or_tiny_search(opts.run, tmp), cells=["darts_v2"], random_cells=opts.random,
                             tasks=opts.tasks, samples=opts.samples, batch=min(opts.tasks, 10))
    print(f"{len(result.scores)} cells on {result.tasks} {result.split} tasks "
          f"(checkpoint at iteration {result.iteration}, {result.seconds:.1f} s)")
    print(f"{'cell':10s} {'log-lik/point':>16s} {'accuracy':>16s}")
    for s in result.scores:
        print(f"{s.label:10s} {s.mean_loglik:8.3f} ± {s.loglik_ci95:5.3f} "
              f"{s.mean_accuracy:8.3f} ± {s.accuracy_ci95:5.3f}")
    print(f"best by log-likelihood: {result.best('loglik').label}")
    return result


if __name__ == "__main__":
    main()
