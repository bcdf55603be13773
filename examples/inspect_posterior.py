"""Open a fit run and print its meta-level edge posterior: the surest edges, entropies, the cell.

Without ``--run`` a tiny search is run first into a temporary folder (seconds). With
``--plot FILE`` the posterior is also drawn as two heatmaps (edges x ops).

    python examples/inspect_posterior.py --run runs/omniglot --top 5 --plot edges.png
"""
import argparse
import math
import tempfile

from search_and_derive import run_or_tiny_search  # the sibling example

import bayesnas
from bayesnas.models import genotype_string, state_name
from bayesnas.viz import plot_edge_posterior


def main(args=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--run", default=None, help="a fit run folder (default: a tiny search in a temporary folder)")
    parser.add_argument("--top", type=int, default=5, help="(edge, op) rows printed, most probable first")
    parser.add_argument("--plot", default=None, help="also draw the posterior to this image file")
    opts = parser.parse_args(args)

    with tempfile.TemporaryDirectory() as tmp:
        run = bayesnas.load_run(run_or_tiny_search(opts.run, tmp))
        post = run.edge_posterior()
        print(run)
        print(f"most probable (edge, op) pairs of {post.label}:")
        for row in post.table(sort_by="prob", descending=True)[:opts.top]:
            edge = f"{state_name(row.source)} -> n{row.target}"
            print(f"  {row.cell:6s} edge {row.edge:2d} ({edge:>12s}) {row.op:14s} {row.prob:.3f}")
        entropy = post.entropy()
        print(f"mean edge entropy: normal {entropy.normal.mean():.3f}, reduce {entropy.reduce.mean():.3f} nats "
              f"(uniform {math.log(10):.3f})")
        print("derived cell:", genotype_string(post.derive()))
        if opts.plot:
            plot_edge_posterior(post.probs, path=opts.plot, title=post.label)
            print(f"wrote {opts.plot}")
        return post


if __name__ == "__main__":
    main()
