import os

import h5py
import numpy as np
import pytest
import torch

from bayesnas.data import (
    ClassRecord,
    FewShotData,
    SplitData,
    default_data_path,
    load_default,
    open_dataset,
    store,
    write_dataset,
)
from bayesnas.errors import DataError, WriteError


def records(rng, names, counts, shape=(5, 4, 2)):
    return [ClassRecord(name, name.split("/")[0] if "/" in name else "",
                        rng.integers(0, 256, (count, *shape), dtype=np.uint8))
            for name, count in zip(names, counts, strict=True)]


@pytest.fixture
def toy(tmp_path):
    rng = np.random.default_rng(0)
    splits = {
        "train": records(rng, ["b/one", "a/two", "c/three"], [3, 4, 2]),
        "test": records(rng, ["z", "y"], [5, 1]),
    }
    path = tmp_path / "toy.h5"
    write_dataset(path, splits, source="unit test", image_size=(5, 4), channels=2)
    return path, splits


def leftovers(folder):
    return sorted(p.name for p in folder.iterdir())


def test_round_trip_pixels_names_and_order(toy):
    path, splits = toy
    data = open_dataset(path)
    assert isinstance(data, FewShotData)
    assert data.splits == ["train", "test"]
    assert (data.source, data.image_size, data.channels) == ("unit test", (5, 4), 2)
    train = data.split("train")
    assert train.class_names == ["a/two", "b/one", "c/three"]        # sorted by name
    assert train.groups == ["a", "b", "c"]
    assert train.counts.tolist() == [4, 3, 2]
    assert train.class_offsets.tolist() == [0, 4, 7, 9]
    assert train.images.dtype == torch.uint8 and train.images.shape == (9, 2, 5, 4)
    by_name = {r.name: r.images for r in splits["train"]}
    for i, name in enumerate(train.class_names):
        expected = torch.from_numpy(by_name[name]).permute(0, 3, 1, 2)
        assert torch.equal(train.class_images(i), expected)
    test = data.split("test")
    assert test.class_names == ["y", "z"] and test.groups == ["", ""]
    assert data.split("train") is train                       # loaded once


def test_file_layout_is_documented_one(toy):
    path, _ = toy
    with h5py.File(path, "r") as f:
        assert f.attrs["format"] == "bayesnas-fewshot" and f.attrs["version"] == 1
        assert f.attrs["image_size"].tolist() == [5, 4] and f.attrs["channels"] == 2
        assert sorted(f.keys()) == ["test", "train"]
        assert list(f["train"].keys()) == ["00000", "00001", "00002"]
        ds = f["train/00000"]
        assert ds.attrs["name"] == "a/two" and ds.attrs["group"] == "a"
        assert ds.compression == "gzip" and ds.dtype == np.uint8 and ds.shape == (4, 5, 4, 2)


def test_summary_counts(toy):
    summary = open_dataset(toy[0]).summary()
    assert summary["classes"] == 5 and summary["images"] == 15
    assert summary["splits"]["train"] == {"classes": 3, "images": 9,
                                          "images_per_class_min": 2, "images_per_class_max": 4}
    assert summary["splits"]["test"]["images_per_class_min"] == 1


@pytest.mark.parametrize("splits, expected", [
    ({}, "at least one split"),
    ({"training": "x"}, "unknown split"),
    ({"train": []}, "at least one class"),
    ({"train": [ClassRecord("a", "", np.zeros((2, 5, 4, 3), np.uint8))]}, "expected [n>=1, 5, 4, 2]"),
    ({"train": [ClassRecord("a", "", np.zeros((2, 5, 4, 2), np.float32))]}, "uint8"),
    ({"train": [ClassRecord("a", "", np.zeros((0, 5, 4, 2), np.uint8))]}, "n>=1"),
    ({"train": [ClassRecord("a", "", np.zeros((1, 5, 4, 2), np.uint8))] * 2}, "two classes named 'a'"),
])
def test_write_rejects_bad_input_and_leaves_no_file(tmp_path, splits, expected):
    path = tmp_path / "out.h5"
    with pytest.raises(DataError) as err:
        write_dataset(path, splits, source="s", image_size=(5, 4), channels=2)
    assert str(path) in str(err.value) and expected in str(err.value)
    assert leftovers(tmp_path) == []


def test_failure_while_writing_keeps_the_previous_file(toy, monkeypatch):
    path, splits = toy
    before = path.read_bytes()
    calls = []
    real = h5py.Group.create_dataset

    def fail_on_third(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise OSError("disk full")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(h5py.Group, "create_dataset", fail_on_third)
    with pytest.raises(WriteError, match=r"toy\.h5: cannot write \(disk full\); the previous toy\.h5"):
        write_dataset(path, splits, source="other", image_size=(5, 4), channels=2)
    assert path.read_bytes() == before
    assert leftovers(path.parent) == ["toy.h5"]


def make_h5(path, attrs=None, build=None):
    with h5py.File(path, "w") as f:
        for key, value in (attrs or {}).items():
            f.attrs[key] = value
        if build:
            build(f)
    return path


GOOD_ATTRS = {"format": "bayesnas-fewshot", "version": 1, "source": "s",
              "image_size": np.array([5, 4]), "channels": 2}


def with_class(shape, dtype=np.uint8, attrs=True):
    def build(f):
        ds = f.create_group("train").create_dataset("00000", data=np.zeros(shape, dtype))
        if attrs:
            ds.attrs["name"], ds.attrs["group"] = "Greek/character03", "Greek"
    return build


@pytest.mark.parametrize("attrs, build, expected", [
    ({}, None, "was written by another tool: expected root attribute 'format'='bayesnas-fewshot'"),
    ({"format": "other"}, None, "written by another tool"),
    ({k: v for k, v in GOOD_ATTRS.items() if k != "image_size"}, with_class((2, 5, 4, 2)),
     "missing root attribute(s) 'image_size'"),
    ({**GOOD_ATTRS, "version": 2}, with_class((2, 5, 4, 2)), "version 2 is not supported"),
    ({**GOOD_ATTRS, "image_size": np.array([5])}, with_class((2, 5, 4, 2)), "'image_size' must be"),
    (GOOD_ATTRS, None, "contains no split"),
    (GOOD_ATTRS, lambda f: f.create_group("train"), "split 'train' has no classes"),
    (GOOD_ATTRS, lambda f: f.create_group("extra"), "unexpected entries ['extra']"),
    (GOOD_ATTRS, with_class((2, 5, 5, 2)),
     "class 'Greek/character03': images are uint8 [2, 5, 5, 2], expected uint8 [n>=1, 5, 4, 2]"),
    (GOOD_ATTRS, with_class((2, 5, 4, 2), np.float32), "images are float32"),
    (GOOD_ATTRS, with_class((2, 5, 4, 2), attrs=False), "missing the string attributes"),
])
def test_open_rejects_foreign_or_inconsistent_files(tmp_path, attrs, build, expected):
    path = make_h5(tmp_path / "bad.h5", attrs, build)
    with pytest.raises(DataError) as err:
        open_dataset(path)
    assert str(err.value).startswith(f"{path}: ") and expected in str(err.value)


def test_open_rejects_missing_folder_and_non_hdf5(tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    for path, expected in [(tmp_path / "nope.h5", "no such file"), (tmp_path, "is a folder"),
                           (text, "not an HDF5 file")]:
        with pytest.raises(DataError, match="^" + str(path) + ": " + expected):
            open_dataset(path)


def test_unknown_split_names_the_file_and_the_splits_present(toy):
    with pytest.raises(DataError, match=r"toy.h5: no split 'val'; the file has train, test"):
        open_dataset(toy[0]).split("val")


def test_split_data_checks_its_parts():
    images = torch.zeros(5, 1, 2, 2, dtype=torch.uint8)
    split = SplitData(images, [2, 3], ["a", "b"], ["", ""])
    assert split.num_classes == 2 and split.image_size == (2, 2) and split.channels == 1
    with pytest.raises(DataError, match="counts add up to 4, but there are 5 images"):
        SplitData(images, [2, 2], ["a", "b"], ["", ""])
    with pytest.raises(DataError, match="uint8"):
        SplitData(images.float(), [2, 3], ["a", "b"], ["", ""])


def test_embedded_file_is_packaged_and_valid():
    path = default_data_path()
    assert path.name == "omniglot_minimal.h5" and path.is_file()
    assert os.path.dirname(store.__file__) in str(path)
    summary = load_default().summary()
    assert summary["classes"] == 242 and summary["images"] == 4840
    assert summary["image_size"] == [28, 28] and summary["channels"] == 1
    assert {s: v["classes"] for s, v in summary["splits"].items()} == {"train": 145, "val": 37, "test": 60}
    train = load_default().split("train")
    # Ink bright on a black background: most pixels are 0, strokes reach 255.
    assert train.images.max() == 255 and (train.images == 0).float().mean() > 0.7
