"""``bayesnas inspect``: the table, entropies, derived cells, plots, and one-line errors."""
import os
import re
import shutil

import pytest
import torch
from click.testing import CliRunner

import bayesnas
from bayesnas.analysis.posterior import EdgePosterior
from bayesnas.cli.main import main
from bayesnas.models.genotypes import load_genotype, state_name
from bayesnas.training import RunDirectory
from tests.run_fixtures import tiny_run


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return tiny_run(tmp_path_factory)


def test_inspect_prints_table_entropies_cells_and_writes_plots(run_dir):
    result = CliRunner().invoke(main, ["inspect", run_dir, "--top", "2"])
    assert result.exit_code == 0, result.output
    out = result.output
    run = bayesnas.load_run(run_dir)
    post = run.edge_posterior()
    # every edge of both cells, with its entropy and its two best ops, as the library says
    for cell in ("normal", "reduce"):
        assert f"{cell} cell: op probabilities per edge" in out
    first = post.top(2)[:2]
    line = next(row for row in out.splitlines() if row.strip().startswith(f"{state_name(0)} -> n0"))
    assert f"{float(post.entropy().normal[0]):.3f}" in line
    assert f"{first[0].op} {first[0].prob:.3f}" in line and f"{first[1].op} {first[1].prob:.3f}" in line
    assert len(re.findall(r"^\s+\S+ -> n\d", out, re.M)) == 2 * 14
    genotype = post.derive()
    op, source = genotype.normal[0]
    op2, source2 = genotype.normal[1]
    assert f"normal cell:\n    n0 <- {op}({state_name(source)}) + {op2}({state_name(source2)})\n" in out
    for name in ("edge_posterior.png", "posterior_history.png", "search_diagnostics.png"):
        path = os.path.join(run_dir, "inspect", name)  # the default folder
        assert os.path.getsize(path) > 10_000 and path in out


def test_inspect_sorting_calibration_and_no_plots(run_dir, tmp_path):
    result = CliRunner().invoke(main, ["inspect", run_dir, "--sort", "entropy", "--calibration", "1",
                                       "--samples", "2", "--no-plots", "--out", str(tmp_path / "plots")])
    assert result.exit_code == 0, result.output
    assert "1 posterior sample" in result.output and "2 samples averaged" in result.output
    assert "plots:" not in result.output and not (tmp_path / "plots").exists()
    entropies = [float(row.split()[3]) for row in result.output.splitlines()
                 if re.match(r"^\s+\S+ -> n\d", row)][:14]
    assert entropies == sorted(entropies)


def test_derive_agrees_with_the_derive_cell_command(run_dir, tmp_path):
    run = bayesnas.load_run(run_dir)
    result = CliRunner().invoke(main, ["derive-cell", run_dir, "--out", str(tmp_path / "g.json"), "--no-plot"])
    assert result.exit_code == 0, result.output
    assert load_genotype(tmp_path / "g.json") == run.edge_posterior().derive()
    result = CliRunner().invoke(main, ["derive-cell", run_dir, "--task-seed", "3", "--out", str(tmp_path / "t.json"),
                                       "--no-plot"])
    assert result.exit_code == 0, result.output
    task = run.task_sampler("val", seed=3).task(0)   # a validation task, by default
    assert load_genotype(tmp_path / "t.json") == run.adapt(task, seed=3).derive()


def test_inspect_errors_are_one_line(run_dir, tmp_path):
    result = CliRunner().invoke(main, ["inspect", str(tmp_path / "missing")])
    assert result.exit_code != 0
    assert result.output.strip() == f"Error: {tmp_path / 'missing'}: no such run folder"
    os.makedirs(tmp_path / "empty")
    result = CliRunner().invoke(main, ["inspect", str(tmp_path / "empty")])
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1 and "config.json: missing" in result.output


def diagnostics_table(output):
    """The rows of the search-diagnostics table in ``bayesnas inspect``'s output, split."""
    rows = []
    for line in output.split("search diagnostics over training")[1].splitlines()[2:]:  # after title, header
        if line.startswith("the derived genotype"):
            break
        rows.append(line.split())
    return rows


def test_inspect_prints_search_diagnostics_recomputed_from_the_history(run_dir):
    result = CliRunner().invoke(main, ["inspect", run_dir, "--no-plots"])
    assert result.exit_code == 0, result.output
    history = RunDirectory(run_dir).read_history()
    table = diagnostics_table(result.output)
    assert [int(row[0]) for row in table] == history["iteration"].tolist() == [0, 1, 2, 3, 4]
    for row, normal, reduce, changed in zip(table, history["alpha_normal"], history["alpha_reduce"],
                                            history["genotype_changed"], strict=True):
        post = EdgePosterior(normal, reduce)
        entropy = torch.cat(post.entropy())
        top = torch.cat([p.max(-1).values for p in post.probs]).mean()
        assert row[1:] == [f"{entropy.mean():.3f}", f"{entropy.max():.3f}", f"{top:.3f}", str(changed)]
    changes = [it for it, c in zip(history["iteration"].tolist(), history["genotype_changed"], strict=True) if c]
    if changes:
        summary = (f"the derived genotype changed {len(changes)} time{'s' * (len(changes) != 1)} in 5 logged "
                   f"steps, last at iteration {changes[-1]}")
    else:
        summary = "the derived genotype did not change in 5 logged steps"
    assert f"\n{summary}\n" in result.output
    result = CliRunner().invoke(main, ["inspect", run_dir, "--no-plots", "--history-rows", "1"])
    assert result.exit_code != 0 and "--history-rows" in result.output and "Traceback" not in result.output


def test_an_old_history_without_diagnostics_still_loads_and_inspects(run_dir, tmp_path):
    import h5py

    copy = tmp_path / "old"
    shutil.copytree(run_dir, copy)
    new = RunDirectory(run_dir).read_history()
    path = copy / "posterior_history.h5"
    path.unlink()
    with h5py.File(path, "w") as f:  # what fit wrote before it recorded diagnostics
        f.attrs["format"] = "bayesnas-posterior-history"
        f.attrs["version"] = 1
        for key in ("iteration", "alpha_normal", "alpha_reduce"):
            f.create_dataset(key, data=new[key])
    old = RunDirectory(copy).read_history()
    assert all(old[key] is None for key in ("edge_entropy_mean", "edge_entropy_max", "top_prob_mean", "genotype",
                                           "genotype_changed"))
    assert (old["alpha_reduce"] == new["alpha_reduce"]).all()
    computed = bayesnas.load_run(copy).posterior_history().diagnostics()
    assert [d.genotype for d in computed] == new["genotype"]
    assert [d.top_prob_mean for d in computed] == pytest.approx(new["top_prob_mean"].tolist(), rel=1e-6)
    result = CliRunner().invoke(main, ["inspect", str(copy), "--no-plots"])
    assert result.exit_code == 0, result.output
    original = CliRunner().invoke(main, ["inspect", run_dir, "--no-plots"])
    assert diagnostics_table(result.output) == diagnostics_table(original.output)
