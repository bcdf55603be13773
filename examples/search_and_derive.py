"""Search on the embedded Omniglot data for a few iterations, then derive and print the cell.

The defaults take seconds on one CPU core: a 14x14 proxy, a 2-cell supernet of 2 channels
and one unrolled step. A search this short decides nothing (the derived cell is noise, and
bayesnas says so); raise ``--iterations`` and drop the small settings for a real search,
or run ``bayesnas fit --config configs/omniglot_cpu.json``.

    python examples/search_and_derive.py --iterations 4 --out runs/example
"""
import argparse
import tempfile

import bayesnas
from bayesnas.models import genotype_string


def tiny_config(iterations: int, seed: int = 0) -> bayesnas.FitConfig:
    """A search small enough for an example: every setting not named here keeps its default."""
    return bayesnas.FitConfig(iterations=iterations, image_size=14, channels=2, cells=2, inner_steps=1,
                              val_every=iterations, val_tasks=2, arch_warmup=1, log_every=1,
                              checkpoint_every=iterations, seed=seed)


def run_or_tiny_search(run: str | None, folder: str) -> str:
    """``run`` itself, or (when it is None) a 3-iteration :func:`tiny_config` search fitted into
    ``folder/run``: what the other examples read when they are given no run."""
    if run is not None:
        return run
    out = f"{folder}/run"
    bayesnas.fit(tiny_config(3), out=out, progress=False)
    return out


def main(args=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--iterations", type=int, default=4, help="meta-iterations of the search")
    parser.add_argument("--seed", type=int, default=0, help="seed of the tasks and initial parameters")
    parser.add_argument("--out", default=None, help="run folder to create (default: a temporary folder)")
    opts = parser.parse_args(args)

    with tempfile.TemporaryDirectory() as tmp:
        out = opts.out or f"{tmp}/run"
        result = bayesnas.fit(tiny_config(opts.iterations, opts.seed), out=out, progress=False)
        print(f"searched {opts.iterations} iterations in {result.seconds:.1f} s; "
              f"validation accuracy {result.rows[-1]['val_acc']:.3f}")
        cell = bayesnas.derive_cell(out, plot=False)
        print(genotype_string(cell.genotype))
        for row in cell.table:
            print(f"  {row.cell:6s} node {row.node} <- {row.source}: {row.op:14s} p={row.prob:.3f}")
        if cell.warning:
            print(f"warning: {cell.warning}")
        return cell


if __name__ == "__main__":
    main()
