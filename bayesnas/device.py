"""The one place that picks the compute device.

Example:

>>> resolve_device("cpu")
device(type='cpu')
"""
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
