"""Synthetic datasets for the data tests: tiny Omniglot trees and miniImageNet layouts.

Every builder returns the pixels it wrote, so tests can check an exact round trip.
"""
import io
import json
import pickle
import zipfile
from pathlib import Path

import h5py
import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
SHARED_OMNIGLOT = REPO.parent / "shared" / "data" / "omniglot"
REAL_ZIPS = [SHARED_OMNIGLOT / "images_background_small1.zip",
             SHARED_OMNIGLOT / "images_background_small2.zip"]


def png_bytes(array, mode=None):
    buffer = io.BytesIO()
    Image.fromarray(array, mode).save(buffer, format="PNG")
    return buffer.getvalue()


def omniglot_images(rng, count, side=12):
    """``count`` 1-bit drawings as Omniglot stores them: bool, ink False (black) on white."""
    return rng.random((count, side, side)) > 0.2


def write_omniglot_tree(root, alphabets, images_per_character=4, side=12, seed=0):
    """Write ``root/<Alphabet>/characterNN/<id>_NN.png`` for ``{alphabet: n_characters}``.

    Returns ``{"Alphabet/characterNN": bool [n, side, side]}`` (True = white background).
    """
    rng = np.random.default_rng(seed)
    written = {}
    for alphabet, n_characters in alphabets.items():
        for c in range(1, n_characters + 1):
            folder = Path(root) / alphabet / f"character{c:02d}"
            folder.mkdir(parents=True)
            drawings = omniglot_images(rng, images_per_character, side)
            for i, drawing in enumerate(drawings):
                Image.fromarray(drawing).save(folder / f"{c:04d}_{i + 1:02d}.png")
            written[f"{alphabet}/character{c:02d}"] = drawings
    return written


def zip_tree(folder, zip_path, extra=None):
    """Zip ``folder`` with its name as the top folder (as Lake's zips are); ``extra``: {name: bytes}."""
    folder = Path(folder)
    with zipfile.ZipFile(zip_path, "w") as archive:
        for file in sorted(folder.rglob("*")):
            archive.write(file, file.relative_to(folder.parent).as_posix())
        for name, data in (extra or {}).items():
            archive.writestr(name, data)
    return zip_path


def mini_classes(splits, images_per_class=3, side=10, seed=0):
    """``{split: {synset: uint8 [n, side, side, 3]}}`` with random RGB pixels."""
    rng = np.random.default_rng(seed)
    return {
        split: {f"n{split_index}{c:07d}": rng.integers(0, 256, (images_per_class, side, side, 3), dtype=np.uint8)
                for c in range(n_classes)}
        for split_index, (split, n_classes) in enumerate(splits.items())
    }


def write_mini_csv(root, classes, encode="png"):
    """Ravi & Larochelle layout. ``encode="png"`` stores lossless bytes under .jpg names
    (PIL reads by content) so pixels round trip exactly; ``"jpeg"`` writes real JPEGs."""
    root = Path(root)
    (root / "images").mkdir(parents=True)
    for split, per_class in classes.items():
        lines = ["filename,label"]
        for synset, images in per_class.items():
            for i, image in enumerate(images):
                name = f"{synset}{i:08d}.jpg"
                if encode == "png":
                    (root / "images" / name).write_bytes(png_bytes(image))
                else:
                    Image.fromarray(image).save(root / "images" / name, format="JPEG", quality=95)
                lines.append(f"{name},{synset}")
        (root / f"{split}.csv").write_text("\n".join(lines) + "\n")
    return root


def write_mini_torchmeta(root, classes, with_labels=True):
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    for split, per_class in classes.items():
        with h5py.File(root / f"{split}_data.hdf5", "w") as f:
            group = f.create_group("datasets")
            for synset, images in per_class.items():
                group.create_dataset(synset, data=images)
        if with_labels:
            (root / f"{split}_labels.json").write_text(json.dumps(list(per_class)))
    return root


def write_mini_learn2learn(root, classes, seed=0):
    """learn2learn cache: all images of a split in one array, classes interleaved."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for split, per_class in classes.items():
        stacked = np.concatenate(list(per_class.values()))
        order = rng.permutation(len(stacked))          # image_data[order[j]] = stacked[j]
        image_data = np.empty_like(stacked)
        image_data[order] = stacked
        class_dict, start = {}, 0
        for synset, images in per_class.items():
            class_dict[synset] = [int(i) for i in order[start:start + len(images)]]
            start += len(images)
        with open(root / f"mini-imagenet-cache-{split}.pkl", "wb") as f:
            pickle.dump({"image_data": image_data, "class_dict": class_dict}, f)
    return root


def write_image_folder(root, classes, mode="L", side=10, seed=0, suffix=".png"):
    """Write ``root/<class>/img_NN<suffix>`` for ``{class: n_images}``, random pixels in ``mode``.

    ``root`` may end in a split folder (``tmp/imgs/train``). JPEG (``suffix=".jpg"``) is
    lossy, so only PNG pixels round trip exactly. Returns ``{class: uint8 [n, side, side, C]}``.
    """
    rng = np.random.default_rng(seed)
    channels = 1 if mode == "L" else 3
    written = {}
    for name, count in classes.items():
        folder = Path(root) / name
        folder.mkdir(parents=True)
        images = rng.integers(0, 256, (count, side, side, channels), dtype=np.uint8)
        for i, image in enumerate(images):
            Image.fromarray(image[:, :, 0] if channels == 1 else image).save(folder / f"img_{i:02d}{suffix}")
        written[name] = images
    return written


def write_fewshot_file(path, source, classes, images_per_class=4, side=10, channels=3, seed=0):
    """A bayesnas-fewshot file of random pixels with ``{split: n_classes}`` and the given ``source``.

    Square images, so rotations apply; ``source`` decides the rotation default
    (``"miniImageNet (...)"`` as the importer writes it: off; ``"Omniglot (...)"``: on).
    """
    from bayesnas.data import ClassRecord, write_dataset

    rng = np.random.default_rng(seed)
    splits = {
        split: [ClassRecord(f"{split}{c:03d}", "", rng.integers(0, 256, (images_per_class, side, side, channels),
                                                                  dtype=np.uint8))
                for c in range(n)]
        for split, n in classes.items()
    }
    write_dataset(path, splits, source=source, image_size=(side, side), channels=channels)
    return str(path)


def mini_imagenet_file(folder, classes=None, images_per_class=4, side=10):
    """A Mini-ImageNet-shaped file made by the real importer (Ravi & Larochelle layout, RGB).

    ``classes``: ``{split: n_classes}`` (default 6 train, 5 val, 5 test). Returns its path.
    """
    from bayesnas.data import import_miniimagenet

    folder = Path(folder)
    layout = classes or {"train": 6, "val": 5, "test": 5}
    write_mini_csv(folder / "mini", mini_classes(layout, images_per_class=images_per_class, side=side))
    out = folder / "mini.h5"
    import_miniimagenet(folder / "mini", out, size=side)
    return str(out)


def all_classes(data):
    """``{name: (split, uint8 [n, C, H, W])}`` over every split of an opened file."""
    found = {}
    for split_name in data.splits:
        split = data.split(split_name)
        for i, name in enumerate(split.class_names):
            found[name] = (split_name, split.class_images(i))
    return found
