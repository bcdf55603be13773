"""benchmarks/score_rank.py: the correlation targets (runs' best val_acc, test accuracy, a 600-task evaluation)."""
import json

import pytest

from benchmarks import score_rank


def test_val_evaluation_reads_each_seed_run_and_is_none_when_one_lacks_it(tmp_path):
    runs = []
    for i, acc in enumerate((0.8, 0.9)):
        run = tmp_path / f"run{i}"
        run.mkdir()
        (run / "ev.json").write_text(json.dumps({"accuracy": acc, "ci95": 0.01, "split": "val", "tasks": 600, "seed": 0,
                                                 "ways": 5, "shots": 1, "inner_steps": 3, "checkpoint": "best"}))
        runs.append(str(run))
    found = score_rank.val_evaluation({"run_dirs": runs}, "ev.json")
    assert abs(found["accuracy"] - 0.85) < 1e-12 and found["runs"] == 2 and found["split"] == "val"
    (tmp_path / "run1" / "ev.json").unlink()
    assert score_rank.val_evaluation({"run_dirs": runs}, "ev.json") is None
    assert score_rank.val_evaluation({}, "ev.json") is None
    (tmp_path / "run1" / "ev.json").write_text(json.dumps({"accuracy": 1.5, "split": "val"}))
    with pytest.raises(SystemExit, match="run1/ev.json: accuracy=1.5"):
        score_rank.val_evaluation({"run_dirs": runs}, "ev.json")


def test_correlate_uses_only_the_cells_with_an_evaluation_for_that_target():
    cells = {c: {"val_acc": v, "test_acc": t} for c, v, t in
             (("a", 0.1, 0.4), ("b", 0.2, 0.3), ("c", 0.3, 0.2), ("d", 0.4, 0.1))}
    scores = {c: {"loglik": s, "accuracy": s} for c, s in zip("abcd", (1.0, 2.0, 3.0, 4.0), strict=True)}
    entry = {}
    score_rank.correlate(entry, scores, cells, list("abcd"))
    assert entry["loglik_vs_val"]["kendall"] == 1.0 and entry["loglik_vs_test"]["kendall"] == -1.0
    assert "loglik_vs_val_eval" not in entry and entry["accuracy_vs_val"]["cells"] == 4
    # three cells evaluated, in an order that disagrees with the scores once
    for c, acc in (("a", 0.5), ("b", 0.7), ("c", 0.6)):
        cells[c]["val_eval"] = {"accuracy": acc}
    score_rank.correlate(entry, scores, cells, list("abcd"))
    assert entry["loglik_vs_val_eval"]["cells"] == 3
    assert abs(entry["loglik_vs_val_eval"]["kendall"] - 1 / 3) < 1e-12
