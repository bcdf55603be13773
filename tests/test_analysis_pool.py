"""A pool of retrained random cells: building, checking, standings, and compare(pool=...)."""
import json

import numpy as np
import pytest
from click.testing import CliRunner

from bayesnas.analysis.compare import compare, format_compare_table, paired_difference
from bayesnas.analysis.pool import check_pool, load_pool, pool_from_results, protocol_of, standing
from bayesnas.cli.main import main
from bayesnas.config import RetrainConfig
from bayesnas.errors import ConfigError
from bayesnas.fileio import write_json
from tests.run_fixtures import fake_runs

# per-task accuracies of four random cells on the same 4 tasks (cell means 0.4, 0.5, 0.6, 0.7)
POOL_ACCS = {"random-1": [[0.2, 0.4, 0.4, 0.6]], "random-2": [[0.4, 0.4, 0.6, 0.6]],
             "random-3": [[0.6, 0.4, 0.6, 0.8]], "random-4": [[0.6, 0.6, 0.8, 0.8]]}


def _pool_compare(tmp_path, monkeypatch, cells=4):
    fake_runs(monkeypatch, POOL_ACCS)
    return compare(random_cells=cells, baselines=(), config=RetrainConfig(), eval_tasks=4, out=tmp_path / "pool",
                   progress=False, match_params=False)


def test_standing_is_the_percentile_and_the_paired_difference_from_the_per_task_median():
    pool = {"rows": [{"accuracies": a[0]} for a in POOL_ACCS.values()]}
    mine = [0.6, 0.6, 0.6, 0.8]  # mean 0.65: above 0.4, 0.5, 0.6, below 0.7
    s = standing("mine", mine, pool)
    assert s.percentile == pytest.approx(0.75) and s.pool_median == pytest.approx(0.55)
    # per-task medians of the pool: [0.5, 0.4, 0.6, 0.7]; differences [0.1, 0.2, 0.0, 0.1]
    assert s.difference == pytest.approx(0.1)
    assert s.difference_ci95 == pytest.approx(1.96 * np.std([0.1, 0.2, 0.0, 0.1], ddof=1) / 2)
    assert standing("tie", [0.4, 0.6, 0.4, 0.6], pool).percentile == pytest.approx(0.375)  # ties count half
    with pytest.raises(ConfigError, match="3 task accuracies, the pool has 4"):
        standing("short", [0.5, 0.5, 0.5], pool)


def test_pool_from_a_comparison_keeps_its_random_cells_and_protocol(tmp_path, monkeypatch):
    result = _pool_compare(tmp_path, monkeypatch).to_dict()
    pool = pool_from_results([result])
    assert [r["label"] for r in pool["rows"]] == ["random-1", "random-2", "random-3", "random-4"]
    assert pool["protocol"] == protocol_of(result) and "arch" not in pool["protocol"]["config"]
    other = json.loads(json.dumps(result))
    other["eval_seed"] = 7
    with pytest.raises(ConfigError, match="eval_seed 0 vs 7"):
        pool_from_results([result, other])


@pytest.mark.parametrize("edit, match", [
    (lambda p: p["rows"][0].update(accuracies=[0.5, float("nan"), 0.5, 0.5]), r"rows\[0\] \(random-1\)"),
    (lambda p: p["rows"][1].update(accuracies=[7.5, 0.5, 0.5, 0.5]), "in \\[0, 1\\]"),
    (lambda p: p["rows"][2].update(accuracies=[0.5]), "expected 4 per-task"),
    (lambda p: p.update(format=9), "not a pool file"),
    (lambda p: p["protocol"].pop("seeds"), "protocol missing or incomplete"),
    (lambda p: p.update(rows=[]), "non-empty list of rows"),
])
def test_a_broken_pool_is_one_error_naming_what_is_wrong(tmp_path, monkeypatch, edit, match):
    pool = pool_from_results([_pool_compare(tmp_path, monkeypatch).to_dict()])
    edit(pool)
    with pytest.raises(ConfigError, match=match):
        check_pool(pool)


def test_compare_against_a_pool_trains_only_the_new_cells_and_reports_standings(tmp_path, monkeypatch):
    pool_path = tmp_path / "pool.json"
    write_json(pool_path, pool_from_results([_pool_compare(tmp_path, monkeypatch, cells=3).to_dict()]))
    trained = fake_runs(monkeypatch, {"darts_v2": [[0.6, 0.6, 0.6, 0.8]], **POOL_ACCS})
    # random-1..3 come from the pool; only darts_v2 and random-4 are trained; the pool then grows to 4
    result = compare(random_cells=4, baselines=("darts_v2",), config=RetrainConfig(), eval_tasks=4,
                     out=tmp_path / "cmp", progress=False, match_params=False, pool=pool_path,
                     save_pool=tmp_path / "grown.json")
    assert sorted(c.arch if isinstance(c.arch, str) else "cell" for c in trained) == ["cell", "darts_v2"]
    labels = [r.label for r in result.rows]
    assert labels == ["darts_v2", "random-4", "random-1", "random-2", "random-3"]
    pooled = result.rows[2]
    assert pooled.accuracies == POOL_ACCS["random-1"][0]
    assert (pooled.difference, pooled.difference_ci95) == pytest.approx(
        paired_difference(POOL_ACCS["random-1"], [[0.6, 0.6, 0.6, 0.8]]))
    darts = result.pool["standings"][0]
    assert result.pool["size"] == 3 and darts["label"] == "darts_v2"
    assert darts["percentile"] == pytest.approx(1.0)  # 0.65 above the pool's 0.4, 0.5, 0.6
    assert "against a pool of 3 random cells" in format_compare_table(result)
    grown = load_pool(tmp_path / "grown.json")
    assert sorted(r["label"] for r in grown["rows"]) == ["random-1", "random-2", "random-3", "random-4"]


def test_a_pool_of_another_protocol_is_refused_before_anything_is_written(tmp_path, monkeypatch):
    pool_path = tmp_path / "pool.json"
    write_json(pool_path, pool_from_results([_pool_compare(tmp_path, monkeypatch, cells=2).to_dict()]))
    with pytest.raises(ConfigError, match="another protocol.*config.inner_steps 3 vs 5"):
        compare(random_cells=0, baselines=("darts_v2",), config=RetrainConfig(inner_steps=3), eval_tasks=4,
                out=tmp_path / "other", progress=False, match_params=False, pool=pool_path)
    assert not (tmp_path / "other").exists()
    result = CliRunner().invoke(main, ["compare", "--baselines", "darts_v2", "--random-cells", "0", "--eval-tasks",
                                       "4", "--pool", str(tmp_path / "missing.json"), "--out",
                                       str(tmp_path / "cli")])
    assert result.exit_code != 0 and "missing.json" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "cli").exists()


def test_a_setting_added_after_a_pool_was_made_counts_as_its_default(tmp_path, monkeypatch):
    result = _pool_compare(tmp_path, monkeypatch, cells=2).to_dict()
    older = json.loads(json.dumps(result))
    del older["config"]["deterministic"]  # a compare.json written before the setting existed
    assert len(pool_from_results([older, result])["rows"]) == 2
    changed = json.loads(json.dumps(result))
    changed["config"]["deterministic"] = True
    with pytest.raises(ConfigError, match="config.deterministic False vs True"):
        pool_from_results([result, changed])
