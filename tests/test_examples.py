"""The scripts in examples/ run end to end through their ``main(args)``, with tiny settings."""
import importlib.util
import pathlib
import sys

import pytest

EXAMPLES = pathlib.Path(__file__).resolve().parents[1] / "examples"

# each fits (or reads) a run: seconds of CPU each, so outside the quick subset
pytestmark = pytest.mark.slow


def example(name):
    if str(EXAMPLES) not in sys.path:  # as when run as scripts: the examples import their sibling
        sys.path.insert(0, str(EXAMPLES))
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def searched(tmp_path_factory):
    """search_and_derive run once into a kept folder; the other examples read that run."""
    out = tmp_path_factory.mktemp("examples") / "run"
    cell = example("search_and_derive").main(["--iterations", "3", "--out", str(out)])
    return out, cell


def test_search_and_derive(searched, capsys):
    out, cell = searched
    assert (out / "genotype.json").is_file() and (out / "metrics.csv").is_file()
    assert len(cell.table) == 16 and {row.cell for row in cell.table} == {"normal", "reduce"}
    assert all(0 < row.prob < 1 for row in cell.table)


def test_score_cells(searched, capsys):
    result = example("score_cells").main(["--run", str(searched[0]), "--random", "2", "--tasks", "2",
                                          "--samples", "1"])
    assert [s.label for s in result.scores] == ["darts_v2", "random-1", "random-2"]
    assert all(0 <= s.mean_accuracy <= 1 and s.mean_loglik < 0 for s in result.scores)
    assert "best by log-likelihood" in capsys.readouterr().out


def test_inspect_posterior(searched, tmp_path, capsys):
    plot = tmp_path / "edges.png"
    post = example("inspect_posterior").main(["--run", str(searched[0]), "--top", "3", "--plot", str(plot)])
    assert post.probs.normal.shape == (14, 10) and plot.stat().st_size > 0
    printed = capsys.readouterr().out
    rows = [line for line in printed.splitlines() if line.lstrip().startswith(("normal edge", "reduce edge"))]
    assert "derived cell: normal n0=" in printed and len(rows) == 3
