import math
import pickle
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from bayesnas.data import import_miniimagenet, import_omniglot, load_default, open_dataset
from bayesnas.errors import ConfigError, DataError

from .data_fixtures import (
    REAL_ZIPS,
    all_classes,
    mini_classes,
    write_mini_csv,
    write_mini_learn2learn,
    write_mini_torchmeta,
    write_omniglot_tree,
    zip_tree,
)


def stored_from_drawing(drawing):
    """What the importer stores at the original size: ink (False) bright, background 0."""
    return torch.from_numpy(np.where(drawing, 0, 255).astype(np.uint8))[:, None]


# ---------------------------------------------------------------- Omniglot, synthetic


@pytest.fixture
def two_inputs(tmp_path):
    """A zip (Alpha, Beta) and a folder (Beta identical, Gamma): Beta overlaps."""
    first = write_omniglot_tree(tmp_path / "set1", {"Alpha": 3, "Beta": 2}, seed=1)
    zipped = zip_tree(tmp_path / "set1", tmp_path / "set1.zip",
                      extra={"set1/README.txt": b"not an image", "__MACOSX/set1/._x.png": b"junk"})
    second_root = tmp_path / "set2"
    write_omniglot_tree(second_root, {"Gamma": 4}, seed=2)
    shutil.copytree(tmp_path / "set1" / "Beta", second_root / "Beta")
    expected = dict(first)
    expected.update(write_omniglot_tree(tmp_path / "only_gamma", {"Gamma": 4}, seed=2))
    return zipped, second_root, expected


def test_omniglot_round_trip_inverts_ink_and_dedupes(tmp_path, two_inputs):
    zipped, folder, expected = two_inputs
    out = tmp_path / "o.h5"
    data = import_omniglot([zipped, folder], out, size=12, progress=False)
    assert data.path == str(out) and data.image_size == (12, 12) and data.channels == 1
    found = all_classes(data)
    assert sorted(found) == sorted(expected)            # Beta once: 3 + 2 + 4 = 9 classes
    assert data.summary()["images"] == 9 * 4
    for name, drawings in expected.items():
        assert torch.equal(found[name][1], stored_from_drawing(drawings)), name
    groups = {g for s in data.splits for g in data.split(s).groups}
    assert groups == {"Alpha", "Beta", "Gamma"}
    assert "set1.zip, set2" in data.source


def test_omniglot_resize_is_deterministic(tmp_path, two_inputs):
    zipped, folder, _ = two_inputs
    a = import_omniglot([zipped, folder], tmp_path / "a.h5", size=5, progress=False)
    b = import_omniglot([folder, zipped], tmp_path / "b.h5", size=5, progress=False)
    assert a.image_size == (5, 5)
    for split in a.splits:
        assert torch.equal(a.split(split).images, b.split(split).images)
        assert a.split(split).class_names == b.split(split).class_names


def test_conflicting_character_names_both_inputs(tmp_path, two_inputs):
    zipped, folder, _ = two_inputs
    drawing = folder / "Beta" / "character01" / "0001_01.png"
    Image.fromarray(np.zeros((12, 12), bool)).save(drawing)
    out = tmp_path / "o.h5"
    with pytest.raises(DataError) as err:
        import_omniglot([zipped, folder], out, progress=False)
    message = str(err.value)
    assert "'Beta/character01' differs between" in message
    assert "set1.zip" in message and str(folder) in message
    assert not out.exists()


def test_corrupt_image_midway_leaves_previous_output(tmp_path, two_inputs):
    zipped, folder, _ = two_inputs
    out = tmp_path / "o.h5"
    out.write_bytes(b"previous")
    (folder / "Gamma" / "character03" / "0003_02.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match=r"Gamma/character03/0003_02.png: unreadable image"):
        import_omniglot([zipped, folder], out, progress=False)
    assert out.read_bytes() == b"previous"
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_split_by_character_follows_documented_rule(tmp_path):
    write_omniglot_tree(tmp_path / "in", {"A": 7, "B": 6, "C": 7}, images_per_character=2)
    data = import_omniglot([tmp_path / "in"], tmp_path / "o.h5", size=4, seed=3,
                           split_fractions=(0.5, 0.2, 0.3), progress=False)
    units = sorted(all_classes(data))
    shuffled = [units[i] for i in np.random.default_rng(3).permutation(20)]
    assert data.split("train").class_names == sorted(shuffled[:10])
    assert data.split("val").class_names == sorted(shuffled[10:14])
    assert data.split("test").class_names == sorted(shuffled[14:])


def test_split_by_alphabet_keeps_alphabets_whole(tmp_path):
    write_omniglot_tree(tmp_path / "in", {a: 2 for a in "ABCDEFGHIJ"}, images_per_character=2)
    data = import_omniglot([tmp_path / "in"], tmp_path / "o.h5", size=4, split_by="alphabet",
                           split_fractions=(0.6, 0.15, 0.25), progress=False)
    alphabets = {s: set(data.split(s).groups) for s in data.splits}
    assert [len(alphabets[s]) for s in ("train", "val", "test")] == [6, 2, 2]     # 1.5 rounds up
    assert set.union(*alphabets.values()) == set("ABCDEFGHIJ")
    assert sum(len(a) for a in alphabets.values()) == 10


def test_seed_changes_the_split_and_zero_fraction_drops_a_split(tmp_path):
    write_omniglot_tree(tmp_path / "in", {"A": 10}, images_per_character=2)
    a = import_omniglot([tmp_path / "in"], tmp_path / "a.h5", size=4, seed=0, progress=False)
    b = import_omniglot([tmp_path / "in"], tmp_path / "b.h5", size=4, seed=1, progress=False)
    assert a.split("train").class_names != b.split("train").class_names
    c = import_omniglot([tmp_path / "in"], tmp_path / "c.h5", size=4, split_fractions=(0.8, 0, 0.2),
                        progress=False)
    assert c.splits == ["train", "test"]
    with pytest.raises(DataError, match="split 'val' .* would get none of the 1 alphabets"):
        import_omniglot([tmp_path / "in"], tmp_path / "d.h5", split_by="alphabet", progress=False)
    assert not (tmp_path / "d.h5").exists()


@pytest.mark.parametrize("kwargs, expected", [
    ({"size": 0}, "size must be a positive integer"),
    ({"seed": -1}, "seed must be a non-negative integer"),
    ({"split_fractions": (0.5, 0.5, 0.5)}, "summing to 1"),
    ({"split_fractions": (1.0, 0.0)}, "summing to 1"),
    ({"split_by": "drawer"}, "split_by must be one of character, alphabet"),
])
def test_omniglot_bad_settings(tmp_path, kwargs, expected):
    with pytest.raises(ConfigError, match=expected):
        import_omniglot([tmp_path], tmp_path / "o.h5", **kwargs)


def test_omniglot_bad_inputs_name_the_input(tmp_path):
    not_zip = tmp_path / "notes.zip"
    not_zip.write_text("hello")
    empty = tmp_path / "empty"
    empty.mkdir()
    shallow = tmp_path / "shallow"
    (shallow / "character01").mkdir(parents=True)
    Image.fromarray(np.ones((4, 4), bool)).save(shallow / "x.png")
    cases = [(tmp_path / "missing.zip", "no such file or folder"), (not_zip, "neither a zip file nor a folder"),
             (empty, "no PNG images found"), (shallow, "is not inside <Alphabet>/<character>/")]
    for path, expected in cases:
        with pytest.raises(DataError) as err:
            import_omniglot([path], tmp_path / "o.h5", progress=False)
        assert str(err.value).startswith(str(path)) and expected in str(err.value)
    assert not (tmp_path / "o.h5").exists()


# ---------------------------------------------------------------- Omniglot, the real zips


@pytest.fixture(scope="module")
def real_import(tmp_path_factory):
    if not all(z.is_file() for z in REAL_ZIPS):
        pytest.skip("the shared Omniglot zips are not on this machine")
    return import_omniglot(REAL_ZIPS, tmp_path_factory.mktemp("real") / "o.h5", progress=False)


def test_real_zips_union_is_8_alphabets_242_characters(real_import):
    summary = real_import.summary()
    assert summary["classes"] == 242 and summary["images"] == 4840
    groups = {g for s in real_import.splits for g in real_import.split(s).groups}
    assert len(groups) == 8 and {"Greek", "Latin", "Korean", "Tagalog"} <= groups
    counts = [summary["splits"][s]["classes"] for s in ("train", "val", "test")]
    assert counts == [math.floor(242 * 0.6 + 0.5), math.floor(242 * 0.75 + 0.5) - 145, 242 - 182]


def test_embedded_file_is_reproducible_from_the_zips(real_import):
    embedded = load_default()
    assert embedded.splits == real_import.splits
    for split in embedded.splits:
        a, b = embedded.split(split), real_import.split(split)
        assert a.class_names == b.class_names and a.groups == b.groups
        assert torch.equal(a.counts, b.counts) and torch.equal(a.images, b.images)


# ---------------------------------------------------------------- miniImageNet


SPLIT_SIZES = {"train": 3, "val": 2, "test": 2}


def check_mini(data, classes, size):
    assert data.splits == list(classes) and data.channels == 3 and data.image_size == (size, size)
    for split, per_class in classes.items():
        loaded = data.split(split)
        assert sorted(loaded.class_names) == sorted(per_class) and set(loaded.groups) == {""}
        for i, name in enumerate(loaded.class_names):
            stored = loaded.class_images(i)
            assert stored.shape == (len(per_class[name]), 3, size, size)
            if size == per_class[name].shape[1]:
                assert torch.equal(stored, torch.from_numpy(per_class[name]).permute(0, 3, 1, 2))


@pytest.mark.parametrize("writer", [write_mini_csv, write_mini_torchmeta, write_mini_learn2learn])
def test_miniimagenet_layouts_round_trip(tmp_path, writer):
    classes = mini_classes(SPLIT_SIZES)
    writer(tmp_path / "mini", classes)
    data = import_miniimagenet(tmp_path / "mini", tmp_path / "m.h5", size=10, progress=False)
    check_mini(data, classes, 10)
    assert data.summary()["classes"] == 7 and data.summary()["images"] == 21


@pytest.mark.parametrize("writer", [write_mini_csv, write_mini_torchmeta, write_mini_learn2learn])
def test_miniimagenet_resizes(tmp_path, writer):
    classes = mini_classes({"val": 2})
    writer(tmp_path / "mini", classes)
    data = import_miniimagenet(tmp_path / "mini", tmp_path / "m.h5", size=6, progress=False)
    check_mini(data, classes, 6)


def test_miniimagenet_real_jpegs_decode_close(tmp_path):
    flat = {"train": {f"n{c:08d}": np.full((2, 16, 16, 3), 40 * c + 20, np.uint8) for c in range(3)}}
    write_mini_csv(tmp_path / "mini", flat, encode="jpeg")
    data = import_miniimagenet(tmp_path / "mini", tmp_path / "m.h5", size=16, progress=False)
    train = data.split("train")
    for i, name in enumerate(train.class_names):
        error = (train.class_images(i).int() - int(flat["train"][name][0, 0, 0, 0])).abs().max()
        assert error <= 2


def test_torchmeta_labels_json_chooses_the_classes(tmp_path):
    classes = mini_classes({"test": 3})
    names = sorted(classes["test"])
    write_mini_torchmeta(tmp_path / "mini", classes)
    (tmp_path / "mini" / "test_labels.json").write_text(f'["{names[2]}", "{names[0]}"]')
    data = import_miniimagenet(tmp_path / "mini", tmp_path / "m.h5", size=10, progress=False)
    assert data.split("test").class_names == [names[0], names[2]]       # stored sorted
    (tmp_path / "mini" / "test_labels.json").write_text(f'["{names[0]}", "n9"]')
    with pytest.raises(DataError, match=r"test_labels.json: class 'n9' has no dataset"):
        import_miniimagenet(tmp_path / "mini", tmp_path / "m2.h5", progress=False)


def test_miniimagenet_missing_or_unreadable_listed_image(tmp_path):
    classes = mini_classes(SPLIT_SIZES)
    root = write_mini_csv(tmp_path / "mini", classes)
    out = tmp_path / "m.h5"
    victim = sorted((root / "images").iterdir())[-1]
    victim.write_bytes(b"garbage")
    with pytest.raises(DataError, match=rf"test.csv, line \d+: .*{victim.name}: unreadable image"):
        import_miniimagenet(root, out, size=10, progress=False)
    victim.unlink()
    with pytest.raises(DataError, match=rf"test.csv, line \d+: .*{victim.name}: listed image is missing"):
        import_miniimagenet(root, out, size=10, progress=False)
    assert not out.exists()


def test_miniimagenet_csv_needs_its_header(tmp_path):
    root = write_mini_csv(tmp_path / "mini", mini_classes({"train": 1}))
    (root / "train.csv").write_text("file,class\nx.jpg,n1\n")
    with pytest.raises(DataError, match=r"train.csv: expected the header 'filename,label'"):
        import_miniimagenet(root, tmp_path / "m.h5", progress=False)


def test_miniimagenet_unrecognised_folder_says_what_was_looked_for(tmp_path):
    (tmp_path / "stuff").mkdir()
    (tmp_path / "stuff" / "train.csv").write_text("filename,label\n")        # no images/
    with pytest.raises(DataError) as err:
        import_miniimagenet(tmp_path / "stuff", tmp_path / "m.h5")
    message = str(err.value)
    assert message.startswith(str(tmp_path / "stuff")) and "no miniImageNet layout recognised" in message
    for looked_for in ("images/", "train.csv", "_data.hdf5", "mini-imagenet-cache-"):
        assert looked_for in message
    with pytest.raises(DataError, match="no such folder"):
        import_miniimagenet(tmp_path / "absent", tmp_path / "m.h5")


def test_learn2learn_pickle_cannot_run_code(tmp_path):
    class Exploit:
        def __reduce__(self):
            return (shutil.rmtree, (str(tmp_path / "victim"),))

    (tmp_path / "victim").mkdir()
    (tmp_path / "mini").mkdir()
    with open(tmp_path / "mini" / "mini-imagenet-cache-train.pkl", "wb") as f:
        pickle.dump({"image_data": Exploit(), "class_dict": {}}, f)
    with pytest.raises(DataError, match="mini-imagenet-cache-train.pkl: cannot unpickle .*refusing"):
        import_miniimagenet(tmp_path / "mini", tmp_path / "m.h5", progress=False)
    assert (tmp_path / "victim").is_dir()


def test_learn2learn_bad_indices(tmp_path):
    (tmp_path / "mini").mkdir()
    with open(tmp_path / "mini" / "mini-imagenet-cache-val.pkl", "wb") as f:
        pickle.dump({"image_data": np.zeros((3, 4, 4, 3), np.uint8), "class_dict": {"n1": [0, 3]}}, f)
    with pytest.raises(DataError, match=r"class_dict\['n1'\] needs indices in 0..2"):
        import_miniimagenet(tmp_path / "mini", tmp_path / "m.h5", progress=False)


def test_imported_file_opens_independently(tmp_path):
    classes = mini_classes({"train": 2})
    write_mini_learn2learn(tmp_path / "mini", classes)
    import_miniimagenet(tmp_path / "mini", tmp_path / "m.h5", size=10, progress=False)
    reopened = open_dataset(tmp_path / "m.h5")
    assert "learn2learn" in reopened.source
    check_mini(reopened, classes, 10)
