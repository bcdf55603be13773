"""Random streams: seed them, save and restore them per process and device, or run a block on a seeded fork.

A training process draws from Python's, NumPy's and torch's CPU streams and, on a GPU,
from the CUDA stream of its own device only. :func:`torch.manual_seed` would also reseed
every other visible GPU's stream, which a process under torchrun does not own; the
functions here touch the CPU streams and the one device's stream, nothing else.
"""
import contextlib
import random

import numpy as np
import torch


def _seed_torch(seed, device):
    torch.default_generator.manual_seed(seed)
    if device is not None and device.type == "cuda":
        _cuda_generator(device).manual_seed(seed)


def _cuda_generator(device):
    torch.cuda.init()
    index = device.index if device.index is not None else torch.cuda.current_device()
    return torch.cuda.default_generators[index]


def seed_everything(seed, device=None):
    """Seed Python, NumPy, torch's CPU stream and, when ``device`` is a GPU, that GPU's stream (no other)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    _seed_torch(seed, device)


@contextlib.contextmanager
def seeded(seed, device):
    """Run the block on a fork of torch's streams seeded with ``seed`` (None: no fork, the global streams).

    ``device``: the torch.device whose CUDA stream is forked (and seeded) too when it is a GPU.
    """
    if seed is None:
        yield
        return
    saved = rng_states(device)
    try:
        _seed_torch(seed, device)
        yield
    finally:
        set_rng_states(saved, device)


def capture_rng(device=None):
    """This process's RNG streams as plain data (tensors, ints, tuples) for a checkpoint.

    Python's, NumPy's and torch's CPU streams, and the stream of ``device`` when it is a
    GPU (``"cuda"``: one state, not every visible GPU's); ``"device"`` names the device.
    """
    kind, key, pos, has_gauss, cached = np.random.get_state()
    device = torch.device("cpu") if device is None else device
    state = {"torch": torch.get_rng_state(), "python": random.getstate(),
             "numpy": {"kind": kind, "key": torch.from_numpy(key.astype(np.int64)), "pos": int(pos),
                       "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
             "device": str(device)}
    if device.type == "cuda":
        state["cuda"] = _cuda_generator(device).get_state()
    return state


def saved_device(state):
    """The device a :func:`capture_rng` state was captured on, as text ("cpu", "cuda:1").

    States written before the device was recorded held every visible GPU's stream (a list)
    or none: "cuda" or "cpu".
    """
    if "device" in state:
        return state["device"]
    return "cuda" if state.get("cuda") is not None else "cpu"


def restore_rng(state, device=None):
    """Inverse of :func:`capture_rng`, onto ``device`` (default: the CPU).

    The CPU streams are always restored. A GPU ``device`` gets the saved GPU stream (a
    state of every visible GPU, from older checkpoints: the one of the same index, else the
    first); a saved GPU stream is not used on the CPU, and a GPU resumed from a CPU state
    keeps the stream it was seeded with. Returns None when the streams continue exactly, else
    one sentence saying what was done instead.
    """
    device = torch.device("cpu") if device is None else device
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["key"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    saved, cuda = saved_device(state), state.get("cuda")
    if isinstance(cuda, (list, tuple)):  # every visible GPU's stream (older checkpoints)
        cuda = cuda[device.index or 0] if len(cuda) > (device.index or 0) else (cuda[0] if cuda else None)
    here = str(device)
    if device.type == "cuda":
        if cuda is None:
            return (f"the checkpoint was made on {saved}, which has no GPU stream: {here} keeps the stream of the "
                    f"run's seed, so random draws on the GPU differ from an uninterrupted run")
        _cuda_generator(device).set_state(cuda)
        return None
    if cuda is not None:
        return (f"the checkpoint was made on {saved}: its GPU stream is not used on {here}, so random draws "
                f"differ from an uninterrupted run on {saved}")
    return None


def same_rng(a, b):
    """Whether two :func:`capture_rng` states hold the same streams (the device's name aside)."""
    def flat(s):
        n = s["numpy"]
        cuda = s.get("cuda")
        return (s["torch"], s["python"], n["kind"], n["key"], n["pos"], n["has_gauss"], n["cached_gaussian"],
                cuda if cuda is None or torch.is_tensor(cuda) else tuple(cuda))

    def equal(x, y):
        if torch.is_tensor(x) or torch.is_tensor(y):
            return torch.is_tensor(x) and torch.is_tensor(y) and torch.equal(x, y)
        if isinstance(x, (tuple, list)) and isinstance(y, (tuple, list)):
            return len(x) == len(y) and all(equal(u, v) for u, v in zip(x, y, strict=True))
        return x == y

    return equal(flat(a), flat(b))


def rng_states(device):
    """torch's CPU stream state and, on a GPU ``device``, its CUDA stream state."""
    return torch.get_rng_state(), (_cuda_generator(device).get_state() if device.type == "cuda" else None)


def set_rng_states(states, device):
    """Inverse of :func:`rng_states`."""
    torch.set_rng_state(states[0])
    if states[1] is not None:
        _cuda_generator(device).set_state(states[1])
