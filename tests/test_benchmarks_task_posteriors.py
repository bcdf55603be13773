"""benchmarks/task_posteriors.py: task posteriors' distance from the prior, and their cells per alphabet."""
from bayesnas.analysis.run import load_run
from bayesnas.models import genotype_string
from benchmarks import task_posteriors


def test_tasks_of_one_alphabet_and_what_their_posteriors_say(tiny_fit_run):
    run = load_run(tiny_fit_run)
    split = run.data.split("val")
    group = split.groups[0]
    sub = task_posteriors.group_split(split, group)
    assert sub.num_classes == split.groups.count(group) and set(sub.groups) == {group}
    assert all(name in split.class_names for name in sub.class_names)
    first = split.class_names.index(sub.class_names[0])
    assert (sub.class_images(0) == split.class_images(first)).all()

    report = task_posteriors.main(task_posteriors.parse(["--run", tiny_fit_run, "--tasks", "3"]))
    assert report["groups"] and all(split.groups.count(g) >= run.config.ways for g in report["groups"])
    assert len(report["tasks"]) == 3 * len(report["groups"])
    alpha_cell = genotype_string(run.edge_posterior().derive())
    for t in report["tasks"]:
        assert t["group"] in report["groups"]
        assert t["same_as_alpha"] == (t["cell"] == alpha_cell)
        assert 0 < t["mean_abs_move"] <= t["max_abs_move"]  # the guide's steps move phi off alpha
    assert 1 <= report["distinct_cells"] <= len(report["tasks"])
