"""benchmarks/seed_agreement.py: shared cell choices and shared candidate rankings of search seeds."""
import json

from bayesnas.models import genotype_to_dict, random_genotype, save_genotype
from benchmarks import seed_agreement


def _scores(path, accuracies, kept, alpha_seed):
    rows = [{"label": "alpha", "genotype": genotype_to_dict(random_genotype(alpha_seed)), "mean_accuracy": 0.9}]
    rows += [{"label": f"candidate-{i}", "genotype": genotype_to_dict(random_genotype(100 + i)), "mean_accuracy": a}
             for i, a in enumerate(accuracies)]
    path.write_text(json.dumps({"kept": kept, "scores": rows}))
    return f"{path.stem}={path}"


def test_agreement_of_cells_and_of_candidate_rankings(tmp_path):
    a, b = random_genotype(1), random_genotype(2)
    normal = list(b.normal)
    normal[:2] = a.normal[:2]          # b makes two of a's choices (node 0 of the normal cell)
    b = b._replace(normal=normal)
    for name, g in (("a", a), ("b", b)):
        save_genotype(g, tmp_path / f"{name}.json")
    ranked = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6]
    report = seed_agreement.main(seed_agreement.parse([
        "--cell", f"a={tmp_path / 'a.json'}", "--cell", f"b={tmp_path / 'b.json'}",
        "--scores", _scores(tmp_path / "s0.json", ranked, "candidate-5", 1),
        "--scores", _scores(tmp_path / "s1.json", ranked, "candidate-5", 2),        # the same order
        "--scores", _scores(tmp_path / "s2.json", ranked[::-1], "candidate-0", 3),  # the reverse
        "--draws", "500", "--json", str(tmp_path / "out.json")]))
    shared = report["cells"]["pairs"]["a vs b"]
    assert 2 / 16 <= shared < 1.0
    assert 0.03 < report["random_pair_agreement"] < 0.12
    s = report["scores"]
    # alpha's cell (different in every run) is left out: 6 shared candidates
    assert s["s0 vs s1"]["candidates"] == 6 and s["s0 vs s1"]["kendall"] == 1.0
    assert s["s0 vs s2"]["kendall"] == -1.0 and s["s1 vs s2"]["kendall"] == -1.0
    assert json.loads((tmp_path / "out.json").read_text())["scores"]["s0 vs s1"]["kept"] == ["candidate-5"] * 2
