"""The data-dependent protocol rules: the rotation default and the model-selection split."""
import pytest

from bayesnas.data import default_rotations, load_default, open_dataset, resolve_rotations, selection_split
from bayesnas.errors import ConfigError, DataError
from tests.data_fixtures import mini_imagenet_file, write_fewshot_file


def test_rotations_are_on_by_default_for_omniglot_sources_only(tmp_path):
    assert default_rotations(load_default()) is True
    mini = open_dataset(mini_imagenet_file(tmp_path))
    assert mini.source.startswith("miniImageNet") and default_rotations(mini) is False
    custom = open_dataset(write_fewshot_file(tmp_path / "birds.h5", "CUB birds, 10x10", {"train": 3}))
    assert default_rotations(custom) is False
    assert resolve_rotations(None, mini) is False and resolve_rotations(True, mini) is True
    assert resolve_rotations(False, load_default()) is False
    # a folder of the user's own images named after Omniglot is still a folder import
    from bayesnas.data import import_folder
    from tests.data_fixtures import write_image_folder

    write_image_folder(tmp_path / "omniglot sketches", {f"c{i}": 2 for i in range(4)})
    import_folder(tmp_path / "omniglot sketches", tmp_path / "sk.h5", split_fractions=(0.5, 0.25, 0.25),
                  progress=False)
    folder = open_dataset(tmp_path / "sk.h5")
    assert "omniglot sketches" in folder.source and default_rotations(folder) is False


def test_the_selection_split_is_val_and_test_only_when_asked(tmp_path):
    assert selection_split(load_default()) == "val"
    assert selection_split(load_default(), "test") == "test"
    noval = open_dataset(write_fewshot_file(tmp_path / "noval.h5", "Omniglot (x)", {"train": 3, "test": 3}))
    with pytest.raises(DataError, match=r"noval\.h5: has no 'val' split .*\(it has train, test\).*--select-on test"):
        selection_split(noval)
    assert selection_split(noval, "test") == "test"
    notest = open_dataset(write_fewshot_file(tmp_path / "notest.h5", "Omniglot (x)", {"train": 3, "val": 3}))
    with pytest.raises(DataError, match=r"notest\.h5: has no 'test' split"):
        selection_split(notest, "test")
    with pytest.raises(ConfigError, match="select_on='train'"):
        selection_split(noval, "train")
