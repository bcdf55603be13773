"""The package states its version once, ships its data and type marker, and says how to cite it."""
import pathlib
import tomllib

import bayesnas

ROOT = pathlib.Path(__file__).resolve().parents[1]


def pyproject():
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def test_version_is_written_once():
    project = pyproject()
    assert "version" not in project["project"] and "version" in project["project"]["dynamic"]
    assert project["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "bayesnas.__version__"}
    assert not (ROOT / "setup.py").exists()
    assert f"version: {bayesnas.__version__}" in (ROOT / "CITATION.cff").read_text(encoding="utf-8")


def test_package_data_and_type_marker_are_declared():
    data = pyproject()["tool"]["setuptools"]["package-data"]
    assert "py.typed" in data["bayesnas"] and (ROOT / "bayesnas" / "py.typed").exists()
    assert data["bayesnas.data"] == ["embedded/*.h5"]
    assert list((ROOT / "bayesnas" / "data").glob(data["bayesnas.data"][0]))


def test_licence_covers_the_shipped_data():
    licence = (ROOT / "LICENSE").read_text(encoding="utf-8")
    assert licence.startswith("MIT License")
    assert "omniglot_minimal.h5" in licence and "Copyright (c) 2015 Brenden Lake" in licence


def test_ci_runs_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8").strip().splitlines()[-1]
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    checks = ci.split("'.[test]' && ", 1)[1]  # CI installs quietly (pip -q); what runs after is the same
    assert checks == "ruff check && mypy && python -m pytest -q -n 2 tests"
    assert f"pip install -e '.[test]' && {checks}" in readme


def test_the_lazy_exports_are_listed():
    assert sorted(bayesnas.__all__) == sorted(["__version__", *bayesnas._EXPORTS])
