"""benchmarks/seeds_vs_pool.py: searched cells' mean against a random-cell pool, paired over tasks."""
import json

import numpy as np
import pytest

from benchmarks import seeds_vs_pool


def test_median_cell_and_the_two_references(tmp_path):
    rng = np.random.default_rng(0)
    tasks = 400
    pool = [rng.uniform(0.5, 1.0, tasks) for _ in range(5)]
    pool[2][:] = 0.7  # the median cell by mean accuracy is not the per-task median
    rows = [{"label": f"random-{i + 1}", "kind": "random", "accuracies": a.tolist()} for i, a in enumerate(pool)]
    rows.append({"label": "mine", "kind": "searched", "accuracies": (pool[2] + 0.05).tolist()})
    rows.append({"label": "other", "kind": "searched", "accuracies": (pool[2] - 0.01).tolist()})
    path = tmp_path / "compare.json"
    path.write_text(json.dumps({"rows": rows}))
    out = seeds_vs_pool.main(seeds_vs_pool.parse(["--compare", str(path), "--group", "both=mine,other",
                                                  "--group", "one=mine", "--json", str(tmp_path / "o.json")]))
    # the median cell is the middle one by mean accuracy, whichever that is
    means = np.array([a.mean() for a in pool])
    middle = np.argsort(means)[2]
    assert np.allclose(seeds_vs_pool.median_cell(np.stack(pool)), pool[middle])
    ref = pool[middle]
    assert out["one"]["pool median cell"]["difference"] == pytest.approx((pool[2] + 0.05 - ref).mean())
    assert out["both"]["accuracy"] == pytest.approx(pool[2].mean() + 0.02)
    per_task = np.median(np.stack(pool), 0)
    assert out["one"]["pool per-task median"]["difference"] == pytest.approx((pool[2] + 0.05 - per_task).mean())
    assert out["pool"]["cells"] == 5
    even = np.stack([np.full(3, v) for v in (0.1, 0.2, 0.3, 0.4)])
    assert np.allclose(seeds_vs_pool.median_cell(even), 0.25)  # the mean of the two middle cells
    with pytest.raises(SystemExit, match="no row labelled nobody"):
        seeds_vs_pool.main(seeds_vs_pool.parse(["--compare", str(path), "--group", "x=nobody"]))


def evaluation(accs, split="val", seed=0):
    """An evaluation JSON as `bayesnas evaluate --json` writes it."""
    return {"accuracy": float(accs.mean()), "ci95": 0.01, "tasks": len(accs), "ways": 5, "shots": 1, "seed": seed,
            "inner_steps": 3, "split": split, "checkpoint": "best", "accuracies": accs.tolist()}


def test_validation_evaluations_replace_the_test_accuracies_and_rows_without_them_are_left_out(tmp_path):
    rng = np.random.default_rng(1)
    rows, val = [], {}
    for i, label in enumerate(["random-1", "random-2", "random-3", "random-4", "mine"]):
        run = tmp_path / label
        run.mkdir()
        val[label] = rng.uniform(0.4, 0.9, 50)
        if label != "random-4":  # no validation evaluation: left out of the pool
            (run / "ev.json").write_text(json.dumps(evaluation(val[label])))
        rows.append({"label": label, "kind": "random" if label != "mine" else "searched", "arch": {"i": i},
                     "accuracies": [1.0] * 50, "run_dirs": [str(run)]})
    first, second = tmp_path / "a.json", tmp_path / "b.json"
    first.write_text(json.dumps({"rows": rows[:3]}))
    second.write_text(json.dumps({"rows": rows[2:]}))  # random-3 in both files: kept once
    out = seeds_vs_pool.main(seeds_vs_pool.parse(["--compare", str(first), "--compare", str(second),
                                                  "--val-eval", "ev.json", "--group", "g=mine"]))
    assert out["split"] == "val" and out["left_out"] == ["random-4"] and out["pool"]["cells"] == 3
    per_task = np.median(np.stack([val[f"random-{i}"] for i in (1, 2, 3)]), 0)
    assert out["g"]["pool per-task median"]["difference"] == pytest.approx((val["mine"] - per_task).mean())
    with pytest.raises(SystemExit, match="random-4 has no ev.json"):
        seeds_vs_pool.main(seeds_vs_pool.parse(["--compare", str(first), "--compare", str(second),
                                                "--val-eval", "ev.json", "--group", "g=random-4"]))
    rows[0]["arch"] = {"i": 99}
    second.write_text(json.dumps({"rows": rows[:1]}))
    with pytest.raises(SystemExit, match="names another cell"):
        seeds_vs_pool.main(seeds_vs_pool.parse(["--compare", str(first), "--compare", str(second),
                                                "--group", "g=mine"]))


@pytest.mark.parametrize("saved, message", [
    (evaluation(np.full(50, 0.5), seed=1), "tasks=50 of seed 1, other rows tasks=50 of seed 0"),
    (evaluation(np.full(50, 0.5), split="test"), "is not an evaluation on the val split"),
    ({**evaluation(np.full(50, 0.5)), "accuracies": [1.5] * 50}, "accuracies="),
    ("[[[[", "ev.json"),
])
def test_a_validation_evaluation_that_cannot_be_paired_or_trusted_is_one_line(tmp_path, saved, message):
    rows = []
    for i, label in enumerate(["random-1", "random-2", "random-3", "mine"]):
        run = tmp_path / label
        run.mkdir()
        body = saved if label == "mine" else evaluation(np.full(50, 0.6))
        (run / "ev.json").write_text(body if isinstance(body, str) else json.dumps(body))
        rows.append({"label": label, "kind": "random" if label != "mine" else "searched", "arch": {"i": i},
                     "accuracies": [1.0] * 50, "run_dirs": [str(run)]})
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"rows": rows}))
    with pytest.raises(SystemExit, match=message):
        seeds_vs_pool.main(seeds_vs_pool.parse(["--compare", str(path), "--val-eval", "ev.json", "--group", "g=mine"]))
