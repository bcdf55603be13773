"""Test-wide settings: one torch thread (the suite's tensors are tiny, and two threads on a
busy 2-core machine spend more time synchronising than computing)."""
import torch

torch.set_num_threads(1)


import numpy as np  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture(scope="session")
def small_omniglot(tmp_path_factory):
    """A small real data file for fast end-to-end tests: embedded Omniglot characters,
    2x2-average-pooled to 14x14, 20 training / 8 validation / 8 test classes."""
    from bayesnas.data import ClassRecord, load_default, write_dataset

    full = load_default()
    splits = {}
    for name, count in (("train", 20), ("val", 8), ("test", 8)):
        split = full.split(name)
        records = []
        for c in range(count):
            images = split.class_images(c).float()  # [n, 1, 28, 28]
            small = torch.nn.functional.avg_pool2d(images, 2).round().to(torch.uint8)
            records.append(ClassRecord(split.class_names[c], split.groups[c],
                                       small.permute(0, 2, 3, 1).numpy().astype(np.uint8)))
        splits[name] = records
    path = tmp_path_factory.mktemp("data") / "omniglot14.h5"
    write_dataset(path, splits, source="embedded Omniglot, 14x14 test subset", image_size=(14, 14), channels=1)
    return str(path)


@pytest.fixture
def tiny_on_small_data(small_omniglot, request):
    """Point the test module's ``TINY`` fit settings (a dict) at the 14x14 subset (a few seconds, not minutes)."""
    request.module.TINY["data"] = small_omniglot


@pytest.fixture(scope="session")
def tiny_fit_run(tmp_path_factory, small_omniglot):
    """A 2-iteration fit run on the 14x14 subset (C=2, 2 cells, 1 inner step), shared by the tests that
    read a fit run's meta-network (scoring, evidence, gradient signal) and do not change it."""
    from bayesnas.config import FitConfig
    from bayesnas.training import fit

    out = tmp_path_factory.mktemp("tiny_fit") / "fit"
    cfg = FitConfig(data=small_omniglot, iterations=2, channels=2, cells=2, queries=2, inner_steps=1, val_every=2,
                    val_tasks=2, val_samples=1, threads=1)
    fit(cfg, out=str(out), progress=False)
    return str(out)
