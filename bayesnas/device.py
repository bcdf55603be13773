"""The one place that picks the compute device.

Example:

>>> resolve_device("cpu")
device(type='cpu')
"""
import contextlib

import torch

from .errors import ConfigError


def resolve_device(name="auto"):
    """Return a :class:`torch.device` for ``name`` ("auto", "cpu", "cuda", "cuda:N")."""
    name = str(name).strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"--device {name}: CUDA was requested but no CUDA device is available")
        try:
            device = torch.device(name)
        except RuntimeError:
            raise ConfigError(f"--device {name}: expected 'auto', 'cpu', 'cuda' or 'cuda:N'") from None
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) present")
        return device
    if name == "cpu":
        return torch.device("cpu")
    raise ConfigError(f"--device {name}: expected 'auto', 'cpu', 'cuda' or 'cuda:N'")


#: cuBLAS's setting for reproducible results (CUDA's documentation: a fixed workspace per stream)
CUBLAS_WORKSPACE = ":4096:8"


def device_name(device):
    """What the device is: the GPU's name ("NVIDIA H100 80GB HBM3") or the CPU's ("x86_64")."""
    import platform

    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return platform.processor() or platform.machine() or "cpu"


def numerics(device):
    """The settings that decide a run's floating-point results on ``device``, as a dict for a run card.

    ``tf32_matmul`` and ``tf32_cudnn``: whether float32 matmuls and convolutions may run in
    TF32 on an Ampere or newer GPU (PyTorch's defaults: matmul no, cuDNN yes);
    ``deterministic``: torch's deterministic algorithms; ``cudnn_deterministic``,
    ``cudnn_benchmark``, ``mkldnn_deterministic`` (oneDNN on the CPU); ``cublas_workspace``:
    $CUBLAS_WORKSPACE_CONFIG.
    """
    import os

    return {"device_name": device_name(device),
            "tf32_matmul": bool(torch.backends.cuda.matmul.allow_tf32),
            "tf32_cudnn": bool(torch.backends.cudnn.allow_tf32),
            "float32_matmul_precision": torch.get_float32_matmul_precision(),
            "deterministic": torch.are_deterministic_algorithms_enabled(),
            "cudnn_deterministic": bool(torch.backends.cudnn.deterministic),
            "cudnn_benchmark": bool(torch.backends.cudnn.benchmark),
            "mkldnn_deterministic": bool(torch.backends.mkldnn.deterministic),
            "cublas_workspace": os.environ.get("CUBLAS_WORKSPACE_CONFIG")}


@contextlib.contextmanager
def determinism(enabled):
    """Within the block, with ``enabled``: deterministic algorithms only.

    ``torch.use_deterministic_algorithms(True)`` (an op without a deterministic kernel
    raises instead of running), cuDNN deterministic and not benchmarking, and
    ``CUBLAS_WORKSPACE_CONFIG`` (unless already set; cuBLAS reads it when a process first
    uses it). It costs speed on a GPU (deterministic kernels, e.g. for the convolution
    weight gradient and atomic-add reductions, are slower); on a CPU, where torch's kernels
    already are deterministic, about nothing. The previous settings are restored after
    the block. ``enabled`` False leaves everything as it is.

    An op without a deterministic kernel is a :class:`ConfigError` naming the setting.
    """
    import os

    if not enabled:
        yield
        return
    before = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
              torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark, torch.backends.mkldnn.deterministic)
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE)
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    torch.backends.mkldnn.deterministic = True
    try:
        yield
    except RuntimeError as exc:
        marker = " does not have a deterministic implementation"
        if marker in str(exc):
            op = str(exc).split(marker)[0].strip()
            raise ConfigError(f"--deterministic: {op} has no deterministic implementation on this device "
                              f"(torch.use_deterministic_algorithms); run without --deterministic") from None
        raise
    finally:
        torch.use_deterministic_algorithms(before[0], warn_only=before[1])
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = before[2], before[3]
        torch.backends.mkldnn.deterministic = before[4]


def check_precision(precision, device):
    """``precision`` if ``device`` can run it, else a :class:`ConfigError` naming the setting.

    "fp32" runs anywhere; "bf16" on a CPU (in software where the CPU lacks bfloat16
    instructions) and on a GPU with bfloat16 support (Ampere or newer). The values are
    :data:`bayesnas.config.PRECISIONS` (config imports no torch, this module no config).
    """
    if precision not in ("fp32", "bf16"):
        raise ConfigError(f"precision={precision!r}: expected 'fp32' or 'bf16'")
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ConfigError(f"--precision bf16: {device_name(device)} has no bfloat16 support; use --precision fp32")
    return precision


def forward_in(precision, device, function, *args):
    """``function(*args)`` (a network's forward on ``device``) computed in ``precision``.

    "fp32": as it is. "bf16": under ``torch.autocast(device.type, dtype=torch.bfloat16)``
    (convolutions and matmuls in bfloat16, the float32 parameters cast per call and their
    gradients returned in float32); a bfloat16 result comes back as float32, so the losses,
    log-probabilities and KL terms computed from it stay float32. Float64 is left alone, as
    autocast leaves it.

    Example: ``logits = forward_in("bf16", x.device, net, x)`` (``logits.dtype``: float32).
    """
    check_precision(precision, torch.device("cpu"))
    if precision == "fp32":
        return function(*args)
    with torch.autocast(torch.device(device).type, dtype=torch.bfloat16):
        out = function(*args)
    return out.float() if out.dtype in (torch.bfloat16, torch.float16) else out
