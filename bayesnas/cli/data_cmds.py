"""``bayesnas data``: import few-shot datasets into the HDF5 store and inspect them."""
import math

import click

from ..data import import_folder, import_miniimagenet, import_omniglot, open_data
from ..data.omniglot import SPLIT_BY
from .common import user_errors
from .options import IMAGE_SIZE, SEED


@click.group("data")
def data():
    """Import few-shot datasets into bayesnas HDF5 files and inspect them."""


@data.group("import")
def import_group():
    """Convert a dataset from its original layout into a bayesnas HDF5 file."""


def _fractions(ctx, param, value):
    if value is None:
        return None
    try:
        parts = tuple(float(v) for v in value.split(","))
    except ValueError:
        parts = ()
    if len(parts) != 3 or any(not math.isfinite(p) or p < 0 for p in parts) or abs(sum(parts) - 1) > 1e-6:
        raise click.BadParameter(f"expected three non-negative numbers summing to 1, got {value!r}")
    return parts


@import_group.command("omniglot")
@click.argument("paths", nargs=-1, required=True, metavar="PATH...")
@click.option("--out", default="omniglot.h5", show_default=True, type=click.Path(dir_okay=False),
              help="HDF5 file to write (replaced atomically).")
@click.option("--size", default=28, show_default=True, type=IMAGE_SIZE,
              help="Side of the square output images, in pixels (PIL LANCZOS resize).")
@click.option("--seed", default=0, show_default=True, type=SEED,
              help="Seed of the split permutation.")
@click.option("--split-fractions", default="0.6,0.15,0.25", show_default=True, callback=_fractions,
              help="train,val,test fractions; a 0 leaves that split out.")
@click.option("--split-by", default="character", show_default=True, type=click.Choice(SPLIT_BY),
              help="Unit that is shuffled into splits.")
@user_errors
def import_omniglot_cmd(paths, out, size, seed, split_fractions, split_by):
    """Import Omniglot zips or folders (PATH...) laid out as [top/]<Alphabet>/<character>/*.png.

    \b
    Characters found in several inputs with identical images are stored once; a
    same-named character with different images is an error. Ink is stored bright
    (255 on a 0 background).

    \b
    Split rule: the units (characters "<Alphabet>/<character>", or alphabets with
    --split-by alphabet) are sorted, then shuffled with
    numpy.random.default_rng(SEED).permutation. With n units, train takes the first
    round(n*f_train), val the next ones up to round(n*(f_train+f_val)), test the rest
    (halves round up).
    """
    _print_summary(import_omniglot(list(paths), out, size=size, seed=seed,
                                   split_fractions=split_fractions, split_by=split_by))


@import_group.command("miniimagenet")
@click.argument("path")
@click.option("--out", default="miniimagenet.h5", show_default=True, type=click.Path(dir_okay=False),
              help="HDF5 file to write (replaced atomically).")
@click.option("--size", default=84, show_default=True, type=IMAGE_SIZE,
              help="Side of the square output images, in pixels (PIL LANCZOS resize).")
@user_errors
def import_miniimagenet_cmd(path, out, size):
    """Import miniImageNet from the folder PATH; its layout is detected.

    \b
    Layouts, tried in this order:
      (a) Ravi & Larochelle: images/ with train.csv, val.csv, test.csv (filename,label)
      (b) torchmeta: {train,val,test}_data.hdf5 (+ {split}_labels.json)
      (c) learn2learn: mini-imagenet-cache-{train,val,test}.pkl
    """
    _print_summary(import_miniimagenet(path, out, size=size))


@import_group.command("folder")
@click.argument("root")
@click.option("--out", required=True, type=click.Path(dir_okay=False),
              help="HDF5 file to write (replaced atomically).")
@click.option("--channels", type=click.Choice(["1", "3"]), default=None,
              help="Convert every image to grey (1) or RGB (3).  [default: as found; all must agree]")
@click.option("--size", type=IMAGE_SIZE, default=None,
              help="Side of the square output images, in pixels (PIL LANCZOS resize).  "
                   "[default: 84 for RGB, 28 for grey]")
@click.option("--seed", type=SEED, default=None,
              help="Seed of the class split (ROOT/<class>/ layout only).  [default: 0]")
@click.option("--split-fractions", default=None, callback=_fractions,
              help="train,val,test fractions of the classes; a 0 leaves that split out "
                   "(ROOT/<class>/ layout only).  [default: 0.6,0.15,0.25]")
@click.option("--invert", is_flag=True, help="Store 255 - v: for dark drawings on a light background.")
@user_errors
def import_folder_cmd(root, out, channels, size, seed, split_fractions, invert):
    """Import your own images from ROOT/<class>/<images> or ROOT/{train,val,test}/<class>/<images>.

    \b
    Images are .png, .jpg and .jpeg files (grey or colour); other files and hidden
    entries are ignored. A class is named by its folder.

    \b
    Without split folders, the classes are split by the Omniglot rule: class names
    sorted, then shuffled with numpy.random.default_rng(SEED).permutation; with n
    classes, train takes the first round(n*f_train), val the next ones up to
    round(n*(f_train+f_val)), test the rest (halves round up).

    \b
    Refused, with the path named: an empty class, an unreadable image, grey and
    colour images mixed (without --channels), too few classes for the fractions, a
    symlink pointing outside ROOT, a split folder with no classes.
    """
    channels = None if channels is None else int(channels)
    _print_summary(import_folder(root, out, channels=channels, size=size, seed=seed,
                                 split_fractions=split_fractions, invert=invert))


@data.command("info")
@click.argument("file", required=False, type=click.Path(dir_okay=False))
@user_errors
def info(file):
    """Describe a bayesnas HDF5 file (default: the embedded Omniglot file)."""
    _print_summary(open_data(file))


def _print_summary(dataset):
    summary = dataset.summary()
    height, width = summary["image_size"]
    click.echo(f"file:       {summary['path']}")
    click.echo(f"source:     {summary['source']}")
    click.echo(f"image size: {height}x{width}, channels: {summary['channels']}")
    click.echo(f"{'split':<8}{'classes':>8}{'images/class':>14}{'images':>9}")
    for name, split in summary["splits"].items():
        low, high = split["images_per_class_min"], split["images_per_class_max"]
        per_class = str(low) if low == high else f"{low}-{high}"
        click.echo(f"{name:<8}{split['classes']:>8}{per_class:>14}{split['images']:>9}")
    click.echo(f"{'total':<8}{summary['classes']:>8}{'':>14}{summary['images']:>9}")
