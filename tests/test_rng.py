"""Random streams per process and device: capture, restore, what a resume on another device or
process count does (the GPU path runs here on CPU generators standing in for the GPUs' ones)."""
import random

import numpy as np
import pytest
import torch

from bayesnas import rng
from bayesnas.training.loop import rank_rng


def draws():
    return torch.rand(3), np.random.rand(2).tolist(), random.random()


def same(a, b):
    return torch.equal(a[0], b[0]) and a[1:] == b[1:]


@pytest.fixture
def fake_gpus(monkeypatch):
    """Two 'GPU' streams: CPU generators that rng uses where it would use cuda:0 and cuda:1's."""
    gens = [torch.Generator().manual_seed(100), torch.Generator().manual_seed(101)]
    monkeypatch.setattr(rng, "_cuda_generator", lambda device: gens[device.index or 0])
    return gens


def test_capture_then_restore_continues_every_cpu_stream():
    rng.seed_everything(3)
    draws()
    state = rng.capture_rng(torch.device("cpu"))
    assert state["device"] == "cpu" and "cuda" not in state
    expected = draws()
    draws()
    assert rng.restore_rng(state, torch.device("cpu")) is None
    assert same(draws(), expected)


def test_a_gpu_checkpoint_holds_its_own_device_stream_only(fake_gpus):
    fake_gpus[1].manual_seed(7)
    state = rng.capture_rng(torch.device("cuda:1"))
    assert state["device"] == "cuda:1"
    assert torch.equal(state["cuda"], fake_gpus[1].get_state())  # one state, not a list over GPUs
    expected = torch.rand(4, generator=fake_gpus[1])
    # resumed on another index (a machine with one GPU): that GPU continues the stream
    assert rng.restore_rng(state, torch.device("cuda:0")) is None
    assert torch.equal(torch.rand(4, generator=fake_gpus[0]), expected)


def test_seeding_touches_the_run_device_only(fake_gpus):
    other = fake_gpus[0].get_state()
    rng.seed_everything(5, torch.device("cuda:1"))
    assert torch.equal(fake_gpus[0].get_state(), other)  # torch.manual_seed would have reseeded it
    assert torch.equal(torch.rand(2, generator=fake_gpus[1]), torch.rand(2, generator=torch.Generator().manual_seed(5)))
    with rng.seeded(9, torch.device("cuda:1")):
        pass
    assert torch.equal(fake_gpus[0].get_state(), other)


def test_resuming_across_device_types_says_what_it_did(fake_gpus):
    gpu_state = rng.capture_rng(torch.device("cuda:1"))
    expected = draws()
    note = rng.restore_rng(gpu_state, torch.device("cpu"))
    assert note == ("the checkpoint was made on cuda:1: its GPU stream is not used on cpu, so random draws differ "
                    "from an uninterrupted run on cuda:1")
    assert same(draws(), expected)  # the CPU streams continue all the same
    cpu_state = rng.capture_rng(torch.device("cpu"))
    before = fake_gpus[0].get_state()
    note = rng.restore_rng(cpu_state, torch.device("cuda:0"))
    assert note.startswith("the checkpoint was made on cpu, which has no GPU stream: cuda:0 keeps the stream of "
                           "the run's seed")
    assert torch.equal(fake_gpus[0].get_state(), before)


def test_an_older_checkpoint_with_every_gpus_stream_restores_the_same_index(fake_gpus):
    states = [torch.Generator().manual_seed(s).get_state() for s in (1, 2)]
    old = {k: v for k, v in rng.capture_rng(torch.device("cpu")).items() if k != "device"}
    old["cuda"] = states
    assert rng.saved_device(old) == "cuda"
    assert rng.restore_rng(old, torch.device("cuda:1")) is None
    assert torch.equal(fake_gpus[1].get_state(), states[1])
    # a 2-GPU checkpoint on a machine whose only GPU is cuda:0: no IndexError
    assert rng.restore_rng(old, torch.device("cuda:0")) is None
    assert torch.equal(fake_gpus[0].get_state(), states[0])


def test_each_rank_resumes_from_its_own_streams_and_another_process_count_is_named():
    rng.seed_everything(1)
    a = rng.capture_rng()
    torch.rand(1)
    b = rng.capture_rng()
    assert rank_rng([a, b], 1, 2) == (b, None)
    assert rank_rng([a, b], 0, 2) == (a, None)
    state, note = rank_rng([a, a], 0, 1)
    assert state is a and note == ("resumed with 1 process from a checkpoint of 2 processes: each process restores "
                                   "rank 0's random streams; the 2 saved ones are equal, so the run continues as it "
                                   "would have")
    state, note = rank_rng([a, b], 0, 1)
    assert state is a and note.endswith("the 2 saved ones differ, so random draws differ from an uninterrupted run")
    state, note = rank_rng([a], 1, 4)
    assert state is a and note.startswith("resumed with 4 processes from a checkpoint of 1 process:")
    assert rank_rng(a, 0, 1) == (a, None)  # an older checkpoint: one dict
    assert "an older checkpoint holds rank 0's only" in rank_rng(a, 1, 2)[1]
    assert rng.same_rng(a, dict(a)) and not rng.same_rng(a, b)


@pytest.mark.cuda
def test_on_a_gpu_capture_holds_the_run_devices_stream():
    device = torch.device("cuda", torch.cuda.device_count() - 1)
    rng.seed_everything(2, device)
    state = rng.capture_rng(device)
    expected = torch.rand(5, device=device)
    torch.rand(5, device=device)
    assert rng.restore_rng(state, device) is None
    assert torch.equal(torch.rand(5, device=device), expected)
