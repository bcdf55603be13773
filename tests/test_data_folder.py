import os

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from bayesnas.cli.main import main
from bayesnas.data import import_folder
from bayesnas.errors import ConfigError, DataError

from .data_fixtures import all_classes, write_image_folder

SIX = {f"class{i}": 3 for i in range(6)}


def load(root, out, **kwargs):
    return import_folder(root, out, progress=False, **kwargs)


def chw(images):
    return torch.from_numpy(images).permute(0, 3, 1, 2)


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


# ---------------------------------------------------------------- what an import stores


def test_class_layout_round_trip_follows_the_omniglot_split_rule(tmp_path):
    written = write_image_folder(tmp_path / "imgs", SIX, mode="L", side=10)
    (tmp_path / "imgs" / "README.txt").write_text("ignored")
    (tmp_path / "imgs" / "class0" / ".hidden.png").write_bytes(b"ignored too")
    data = load(tmp_path / "imgs", tmp_path / "o.h5", size=10, seed=3)
    assert data.channels == 1 and data.image_size == (10, 10)
    found = all_classes(data)
    assert sorted(found) == sorted(SIX)
    for name, images in written.items():
        assert torch.equal(found[name][1], chw(images)), name
    shuffled = [sorted(SIX)[i] for i in np.random.default_rng(3).permutation(6)]
    # 6 classes at 0.6/0.15/0.25: train round(3.6) = 4, val up to round(4.5) = 5 (halves up)
    assert data.split("train").class_names == sorted(shuffled[:4])
    assert data.split("val").class_names == sorted(shuffled[4:5])
    assert data.split("test").class_names == sorted(shuffled[5:])
    assert {g for s in data.splits for g in data.split(s).groups} == {""}
    assert data.source.startswith("folder (imgs); class split seed 3")
    assert "omniglot" not in data.source.lower()


def test_split_is_deterministic_for_a_seed_and_changes_with_it(tmp_path):
    write_image_folder(tmp_path / "imgs", {f"c{i:02d}": 1 for i in range(12)}, side=4)
    memberships = []
    for seed, name in [(5, "a.h5"), (5, "b.h5"), (6, "c.h5")]:
        data = load(tmp_path / "imgs", tmp_path / name, seed=seed, split_fractions=(0.5, 0.25, 0.25))
        memberships.append({s: data.split(s).class_names for s in data.splits})
    assert [len(memberships[0][s]) for s in ("train", "val", "test")] == [6, 3, 3]
    assert memberships[0] == memberships[1]
    assert memberships[0] != memberships[2]


def test_zero_fraction_leaves_a_split_out(tmp_path):
    write_image_folder(tmp_path / "imgs", SIX, side=4)
    data = load(tmp_path / "imgs", tmp_path / "o.h5", split_fractions=(0.5, 0, 0.5))
    assert data.splits == ["train", "test"]
    assert [data.split(s).num_classes for s in data.splits] == [3, 3]


def test_split_layout_keeps_the_folders_splits(tmp_path):
    root = tmp_path / "imgs"
    train = write_image_folder(root / "train", {"ant": 2, "bee": 3}, mode="RGB", side=8, seed=1)
    val = write_image_folder(root / "val", {"cat": 2}, mode="RGB", side=8, seed=2)
    write_image_folder(root / "test", {"dog": 2, "eel": 2}, mode="RGB", side=8, seed=3, suffix=".JPG")
    data = load(root, tmp_path / "o.h5", size=8)
    assert data.splits == ["train", "val", "test"] and data.channels == 3
    assert data.split("train").class_names == ["ant", "bee"]
    assert data.split("val").class_names == ["cat"]
    assert data.split("test").class_names == ["dog", "eel"]
    assert data.split("test").images.shape == (4, 3, 8, 8)
    found = all_classes(data)
    for name, images in {**train, **val}.items():
        assert torch.equal(found[name][1], chw(images)), name
    assert data.source == "folder (imgs); split folders train/val/test; 8x8 LANCZOS, RGB"


def test_split_layout_without_val(tmp_path):
    write_image_folder(tmp_path / "imgs" / "train", {"a": 1, "b": 1}, side=4)
    write_image_folder(tmp_path / "imgs" / "test", {"c": 1}, side=4)
    assert load(tmp_path / "imgs", tmp_path / "o.h5").splits == ["train", "test"]


def test_default_size_is_84_for_rgb_and_28_for_grey(tmp_path):
    write_image_folder(tmp_path / "grey", SIX, mode="L", side=5)
    write_image_folder(tmp_path / "rgb", SIX, mode="RGB", side=5)
    grey = load(tmp_path / "grey", tmp_path / "g.h5")
    rgb = load(tmp_path / "rgb", tmp_path / "c.h5")
    assert grey.image_size == (28, 28) and grey.split("train").images.shape == (12, 1, 28, 28)
    assert rgb.image_size == (84, 84) and rgb.split("train").images.shape == (12, 3, 84, 84)
    assert load(tmp_path / "grey", tmp_path / "g3.h5", channels=3).image_size == (84, 84)


@pytest.mark.parametrize("mode", ["L", "RGB"])
def test_invert_stores_255_minus_the_pixels(tmp_path, mode):
    written = write_image_folder(tmp_path / "imgs", SIX, mode=mode, side=6)
    found = all_classes(load(tmp_path / "imgs", tmp_path / "o.h5", size=6, invert=True))
    for name, images in written.items():
        assert torch.equal(found[name][1], chw(255 - images)), name


def test_channels_flag_converts_every_image(tmp_path):
    grey = write_image_folder(tmp_path / "grey", SIX, mode="L", side=6)
    found = all_classes(load(tmp_path / "grey", tmp_path / "g.h5", size=6, channels=3))
    for name, images in grey.items():
        assert torch.equal(found[name][1], chw(np.repeat(images, 3, axis=3))), name
    rgb = write_image_folder(tmp_path / "rgb", SIX, mode="RGB", side=6)
    found = all_classes(load(tmp_path / "rgb", tmp_path / "c.h5", size=6, channels=1))
    expected = np.array(Image.fromarray(rgb["class2"][0]).convert("L"))
    assert torch.equal(found["class2"][1][0, 0], torch.from_numpy(expected))


def test_sixteen_bit_and_grey_palette_pngs_count_as_grey(tmp_path):
    root = tmp_path / "imgs"
    write_image_folder(root, {"plain": 2, "other": 2}, mode="L", side=3)
    (root / "deep").mkdir()
    Image.fromarray(np.array([[0, 0x80FF, 0xFFFF]] * 3, dtype=np.uint16)).save(root / "deep" / "a.png")
    (root / "palette").mkdir()
    Image.fromarray(np.full((3, 3), 77, np.uint8)).convert("P").save(root / "palette" / "a.png")
    found = all_classes(load(root, tmp_path / "o.h5", size=3, split_fractions=(1, 0, 0)))
    assert found["deep"][1][0, 0, 0].tolist() == [0, 0x80, 0xFF]      # top 8 bits, not clipped
    assert torch.equal(found["palette"][1], torch.full((1, 1, 3, 3), 77, dtype=torch.uint8))


def test_symlinks_inside_root_are_followed(tmp_path):
    written = write_image_folder(tmp_path / "imgs", SIX, side=4)
    os.symlink("../class1/img_00.png", tmp_path / "imgs" / "class0" / "z_link.png")
    os.symlink("class5", tmp_path / "imgs" / "class6")
    found = all_classes(load(tmp_path / "imgs", tmp_path / "o.h5", size=4))
    assert len(found["class0"][1]) == 4
    assert torch.equal(found["class0"][1][3], chw(written["class1"])[0])
    assert torch.equal(found["class6"][1], chw(written["class5"]))


# ---------------------------------------------------------------- bad input


def empty_class(root):
    (root / "zzz").mkdir()
    return "imgs/zzz: class folder has no PNG or JPEG images"


def class_of_text_files(root):
    (root / "notes").mkdir()
    (root / "notes" / "readme.txt").write_text("not an image")
    return "imgs/notes: class folder has no PNG or JPEG images"


def not_an_image(root):
    (root / "class2" / "img_01.png").write_bytes(b"not a png")
    return "imgs/class2/img_01.png: unreadable image"


def truncated_image(root):
    path = root / "class4" / "img_02.png"
    path.write_bytes(path.read_bytes()[:60])
    return "imgs/class4/img_02.png: unreadable image"


def mixed_channels(root):
    write_image_folder(root, {"colour": 2}, mode="RGB", side=6)
    # class2 is the first class of train for seed 0, so its first image is read first.
    return "imgs/colour/img_00.png is colour but imgs/class2/img_00.png is grey; pass channels 1 or 3"


def too_few_classes(root):
    for name in ("class2", "class3", "class4", "class5"):
        for file in (root / name).iterdir():
            file.unlink()
        (root / name).rmdir()
    return "imgs: split 'test' (fraction 0.25) would get none of the 2 classes"


def folder_symlink_outside(root):
    write_image_folder(root.parent / "elsewhere", {"x": 2}, side=6)
    os.symlink(root.parent / "elsewhere" / "x", root / "x")
    return "imgs/x: symlink to "


def file_symlink_escaping(root):
    write_image_folder(root.parent / "elsewhere", {"x": 2}, side=6)
    os.symlink("../../elsewhere/x/img_00.png", root / "class3" / "img_09.png")
    return "imgs/class3/img_09.png: symlink to "


def broken_symlink(root):
    os.symlink("img_77.png", root / "class1" / "img_99.png")
    return "imgs/class1/img_99.png: broken symlink"


def move_into(root, split, names):
    (root / split).mkdir(exist_ok=True)
    for name in names:
        (root / name).rename(root / split / name)


def empty_split_folder(root):
    move_into(root, "train", SIX)
    (root / "val").mkdir()
    return "imgs/val: no class folders"


def split_folder_with_only_files(root):
    move_into(root, "test", SIX)
    (root / "train").mkdir()
    (root / "train" / "notes.txt").write_text("no classes here")
    return "imgs/train: no class folders"


def split_and_class_folders(root):
    move_into(root, "train", ["class0"])
    return "imgs: holds split folders (train) and other folders (class1, class2, class3)"


def class_in_two_splits(root):
    move_into(root, "train", SIX)
    write_image_folder(root / "test", {"class4": 1}, side=6)
    return "imgs: class 'class4' is in both train/ and test/"


def image_outside_a_class(root):
    (root / "class0" / "img_00.png").rename(root / "stray.png")
    return "imgs/stray.png: image outside a class folder"


def folder_inside_a_class(root):
    write_image_folder(root / "class3", {"sub": 1}, side=6)
    return "imgs/class3/sub: a folder inside the class folder"


BAD_INPUTS = [empty_class, class_of_text_files, not_an_image, truncated_image, mixed_channels,
              too_few_classes, folder_symlink_outside, file_symlink_escaping,
              broken_symlink, empty_split_folder, split_folder_with_only_files, split_and_class_folders,
              class_in_two_splits, image_outside_a_class, folder_inside_a_class]


@pytest.mark.parametrize("spoil", BAD_INPUTS, ids=[f.__name__ for f in BAD_INPUTS])
def test_bad_input_names_the_path_and_keeps_the_previous_file(tmp_path, spoil):
    root = tmp_path / "imgs"
    write_image_folder(root, SIX, side=6)
    expected = spoil(root)
    out = tmp_path / "o.h5"
    out.write_bytes(b"previous")
    with pytest.raises(DataError) as err:
        load(root, out, size=6)
    assert expected in str(err.value).replace(str(tmp_path) + os.sep, "")
    assert out.read_bytes() == b"previous"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_symlink_message_names_the_target(tmp_path):
    root = tmp_path / "imgs"
    write_image_folder(root, SIX, side=6)
    folder_symlink_outside(root)
    with pytest.raises(DataError, match=f"symlink to {tmp_path / 'elsewhere' / 'x'}, outside {root}"):
        load(root, tmp_path / "o.h5")


def test_mixed_channels_import_with_channels_given(tmp_path):
    root = tmp_path / "imgs"
    write_image_folder(root, SIX, side=6)
    mixed_channels(root)
    assert load(root, tmp_path / "o.h5", size=6, channels=3).channels == 3


@pytest.mark.parametrize("kwargs, error, expected", [
    ({"channels": 2}, ConfigError, "channels must be 1, 3 or None"),
    ({"channels": 1.0}, ConfigError, "channels must be 1, 3 or None"),
    ({"size": 0}, ConfigError, "size must be a positive integer"),
    ({"seed": -1}, ConfigError, "seed must be a non-negative integer"),
    ({"split_fractions": (0.5, 0.6, 0)}, ConfigError, "summing to 1"),
])
def test_bad_settings(tmp_path, kwargs, error, expected):
    write_image_folder(tmp_path / "imgs", SIX, side=4)
    with pytest.raises(error, match=expected):
        load(tmp_path / "imgs", tmp_path / "o.h5", **kwargs)
    assert not (tmp_path / "o.h5").exists()


def test_split_settings_with_split_folders_are_refused(tmp_path):
    write_image_folder(tmp_path / "imgs" / "train", {"a": 1}, side=4)
    with pytest.raises(ConfigError, match="imgs: has split folders \\(train\\); a seed and split fractions"):
        load(tmp_path / "imgs", tmp_path / "o.h5", seed=1)


def test_root_must_be_a_folder(tmp_path):
    with pytest.raises(DataError, match="absent: no such folder"):
        load(tmp_path / "absent", tmp_path / "o.h5")
    (tmp_path / "file.png").write_bytes(b"x")
    with pytest.raises(DataError, match="file.png: not a folder"):
        load(tmp_path / "file.png", tmp_path / "o.h5")
    write_image_folder(tmp_path / "imgs", SIX, side=4)
    with pytest.raises(DataError, match="imgs: is a folder, expected the HDF5 file"):
        load(tmp_path / "imgs", tmp_path / "imgs")
    (tmp_path / "nothing").mkdir()
    with pytest.raises(DataError, match="nothing: no class folders"):
        load(tmp_path / "nothing", tmp_path / "o.h5")


# ---------------------------------------------------------------- command line


def test_cli_import_then_info(tmp_path):
    write_image_folder(tmp_path / "imgs", SIX, mode="RGB", side=6)
    out = tmp_path / "o.h5"
    result = run("data", "import", "folder", tmp_path / "imgs", "--out", out, "--size", "6",
                 "--seed", "2", "--split-fractions", "0.5,0.17,0.33", "--invert")
    assert result.exit_code == 0, result.output
    info = run("data", "info", out)
    assert info.exit_code == 0, info.output
    lines = info.output.splitlines()
    assert lines[1] == ("source:     folder (imgs); class split seed 2, fractions 0.5/0.17/0.33; "
                        "6x6 LANCZOS, RGB, inverted")
    assert lines[2] == "image size: 6x6, channels: 3"
    rows = {line.split()[0]: line.split()[1:] for line in lines[4:]}
    assert rows == {"train": ["3", "3", "9"], "val": ["1", "3", "3"], "test": ["2", "3", "6"],
                    "total": ["6", "18"]}


def test_cli_channels_flag(tmp_path):
    write_image_folder(tmp_path / "imgs", SIX, mode="RGB", side=6)
    result = run("data", "import", "folder", tmp_path / "imgs", "--out", tmp_path / "o.h5", "--channels", "1")
    assert result.exit_code == 0, result.output
    assert "image size: 28x28, channels: 1" in result.output


def test_cli_bad_input_is_one_line_and_writes_nothing(tmp_path):
    write_image_folder(tmp_path / "imgs", SIX, side=6)
    (tmp_path / "imgs" / "class5" / "img_00.png").write_bytes(b"junk")
    out = tmp_path / "o.h5"
    result = run("data", "import", "folder", tmp_path / "imgs", "--out", out)
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert result.output.splitlines() == [f"Error: {tmp_path / 'imgs' / 'class5' / 'img_00.png'}: unreadable image "
                                          f"(not PNG or JPEG)"]
    assert not out.exists()


@pytest.mark.parametrize("flags", [["--channels", "2"], ["--size", "0"], ["--split-fractions", "1,1,1"]])
def test_cli_bad_flags_are_usage_errors(tmp_path, flags):
    result = run("data", "import", "folder", tmp_path, "--out", tmp_path / "o.h5", *flags)
    assert result.exit_code == 2 and "Usage:" in result.output and "Traceback" not in result.output


def test_cli_needs_out(tmp_path):
    result = run("data", "import", "folder", tmp_path)
    assert result.exit_code == 2 and "--out" in result.output
