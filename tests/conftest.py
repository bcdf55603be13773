"""Test-wide settings: one torch thread (the suite's tensors are tiny, and two threads on a
busy 2-core machine spend more time synchronising than computing); the CPU only, wherever the
suite runs.

The suite checks numbers measured on the CPU; on a GPU machine ``device="auto"`` would move
runs (and the torchrun jobs the tests start, which inherit the environment) to CUDA. So the
GPUs are hidden unless ``BAYESNAS_TEST_CUDA=1``; the tests marked ``cuda`` run only then, on
a machine that has one (``BAYESNAS_TEST_CUDA=1 pytest -m cuda tests``), and skip elsewhere.
"""
import os

import torch

if os.environ.get("BAYESNAS_TEST_CUDA") != "1":
    os.environ["CUDA_VISIBLE_DEVICES"] = ""  # before anything asks torch for a GPU
os.environ.setdefault("BAYESNAS_VALIDATE", "1")  # distributions check their arguments (inference.model.validate_args)
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


def pytest_configure(config):
    config.addinivalue_line("markers",
                            "cuda: needs a CUDA device; runs only with BAYESNAS_TEST_CUDA=1 on a GPU machine")


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    why = ("needs a CUDA device (run with BAYESNAS_TEST_CUDA=1 on a GPU machine)"
           if os.environ.get("BAYESNAS_TEST_CUDA") == "1" or not torch.backends.cuda.is_built()
           else "needs a CUDA device; GPUs are hidden from the suite unless BAYESNAS_TEST_CUDA=1")
    skip = pytest.mark.skip(reason=why)
    for item in items:
        if item.get_closest_marker("cuda") is not None:
            item.add_marker(skip)
