import pytest
from click.testing import CliRunner

from bayesnas.cli.main import main
from bayesnas.data import open_dataset

from .data_fixtures import mini_classes, write_mini_torchmeta, write_omniglot_tree, zip_tree


def run(*args):
    return CliRunner().invoke(main, list(args))


def assert_one_line_error(result, *fragments):
    assert result.exit_code == 1
    assert "Traceback" not in result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ")
    for fragment in fragments:
        assert fragment in lines[0]


def test_info_on_the_embedded_file():
    result = run("data", "info")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert "omniglot_minimal.h5" in lines[0]
    assert "image size: 28x28, channels: 1" in result.output
    rows = {line.split()[0]: line.split()[1:] for line in lines[4:]}
    assert rows["train"] == ["145", "20", "2900"]
    assert rows["val"] == ["37", "20", "740"]
    assert rows["test"] == ["60", "20", "1200"]
    assert rows["total"] == ["242", "4840"]


@pytest.mark.parametrize("content, expected", [
    (b"plain text", "not an HDF5 file"),
    (b"\x89HDF\r\n\x1a\n truncated", "corrupt or truncated HDF5 file"),
])
def test_info_on_a_bad_file_is_one_clean_line(tmp_path, content, expected):
    bad = tmp_path / "bad.h5"
    bad.write_bytes(content)
    assert_one_line_error(run("data", "info", str(bad)), str(bad), expected)


def test_info_on_a_missing_file(tmp_path):
    assert_one_line_error(run("data", "info", str(tmp_path / "absent.h5")), "absent.h5: no such file")


def test_import_omniglot_then_info(tmp_path):
    write_omniglot_tree(tmp_path / "set", {"Alpha": 6, "Beta": 4}, images_per_character=3)
    zipped = zip_tree(tmp_path / "set", tmp_path / "set.zip")
    out = tmp_path / "o.h5"
    result = run("data", "import", "omniglot", str(zipped), "--out", str(out), "--size", "8",
                 "--seed", "2", "--split-fractions", "0.5,0.2,0.3", "--split-by", "character")
    assert result.exit_code == 0, result.output
    data = open_dataset(out)
    assert data.image_size == (8, 8)
    assert [data.summary()["splits"][s]["classes"] for s in data.splits] == [5, 2, 3]
    info = run("data", "info", str(out))
    assert info.exit_code == 0 and "total" in info.output and "30" in info.output.splitlines()[-1]


def test_import_omniglot_library_error_is_one_line(tmp_path):
    result = run("data", "import", "omniglot", str(tmp_path / "nothing.zip"), "--out", str(tmp_path / "o.h5"))
    assert_one_line_error(result, "nothing.zip: no such file or folder")
    assert not (tmp_path / "o.h5").exists()


@pytest.mark.parametrize("flags", [
    ["--split-fractions", "0.5,0.5"],
    ["--split-fractions", "a,b,c"],
    ["--split-fractions", "0.5,0.6,-0.1"],
    ["--split-by", "drawer"],
    ["--size", "0"],
    ["--seed", "-3"],
])
def test_bad_flags_are_usage_errors(tmp_path, flags):
    result = run("data", "import", "omniglot", str(tmp_path), *flags)
    assert result.exit_code == 2 and "Usage:" in result.output and "Traceback" not in result.output


def test_import_needs_a_path():
    result = run("data", "import", "omniglot")
    assert result.exit_code == 2 and "Missing argument" in result.output


def test_help_documents_the_split_rule():
    result = run("data", "import", "omniglot", "--help")
    assert result.exit_code == 0
    assert "default_rng(SEED).permutation" in result.output and "round(n*f_train)" in result.output


def test_import_miniimagenet(tmp_path):
    write_mini_torchmeta(tmp_path / "mini", mini_classes({"train": 3, "test": 2}))
    out = tmp_path / "m.h5"
    result = run("data", "import", "miniimagenet", str(tmp_path / "mini"), "--out", str(out), "--size", "10")
    assert result.exit_code == 0, result.output
    assert open_dataset(out).splits == ["train", "test"]
    assert "image size: 10x10, channels: 3" in result.output


def test_import_miniimagenet_unrecognised(tmp_path):
    result = run("data", "import", "miniimagenet", str(tmp_path), "--out", str(tmp_path / "m.h5"))
    assert_one_line_error(result, "no miniImageNet layout recognised")
