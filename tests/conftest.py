"""Test-wide settings: one torch thread (the suite's tensors are tiny, and two threads on a
busy 2-core machine spend more time synchronising than computing)."""
import torch

torch.set_num_threads(1)
