"""The Conv-4 few-shot baseline (the standard MAML backbone).

Example:

>>> net = Conv4(in_channels=3, num_classes=5, hidden=32, image_size=84)
>>> net(torch.randn(2, 3, 84, 84)).shape
torch.Size([2, 5])
>>> net.flat_features          # 32 * 5 * 5
800
"""
import torch.nn as nn

from ..errors import ConfigError
from ._conv import use_whole_call_convolutions
from .macro import check_positive
from .operations import batch_norm

BLOCKS = 4


class Conv4(nn.Module):
    """Four blocks of [3x3 conv (padding 1), BN, ReLU, 2x2 max-pool], flatten, linear.

    The convolutions have no bias: the affine BatchNorm after each already has one.

    ``forward(x [B, in_channels, H, W]) -> logits [B, num_classes]``, ``image_size`` being
    ``H`` (square images) or ``(H, W)``. Each pool floors the size: 28 -> 14 -> 7 -> 3 -> 1,
    84 -> 42 -> 21 -> 10 -> 5, so the linear layer takes ``hidden * h * w`` features, ``h``
    and ``w`` computed from ``image_size`` (each at least 16). BatchNorms are affine and keep
    no running statistics (MAML style).
    """

    def __init__(self, in_channels=1, num_classes=5, hidden=64, image_size=28):
        super().__init__()
        shape = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
        if len(shape) != 2:
            raise ConfigError(f"image_size={image_size!r}: expected H or (H, W)")
        check_positive(in_channels=in_channels, num_classes=num_classes, hidden=hidden,
                       height=shape[0], width=shape[1])
        if min(shape) < 2 ** BLOCKS:
            raise ConfigError(f"images of {shape[0]}x{shape[1]}: Conv4 halves each side {BLOCKS} times "
                              f"and needs at least {2 ** BLOCKS} pixels per side")
        self.image_size = shape
        self.flat_features = hidden * (shape[0] // 2 ** BLOCKS) * (shape[1] // 2 ** BLOCKS)
        layers, c = [], in_channels
        for _ in range(BLOCKS):
            layers += [nn.Conv2d(c, hidden, 3, padding=1, bias=False), batch_norm(hidden, affine=True),
                       nn.ReLU(), nn.MaxPool2d(2)]
            c = hidden
        # second-order MAML differentiates the convolutions twice: whole-call derivatives (models/_conv.py)
        self.features = use_whole_call_convolutions(nn.Sequential(*layers))
        self.classifier = nn.Linear(self.flat_features, num_classes)

    def forward(self, x):
        if x.dim() != 4 or tuple(x.shape[2:]) != self.image_size:
            raise ValueError(f"x has shape {tuple(x.shape)}, expected [B, C, {self.image_size[0]}, "
                             f"{self.image_size[1]}] (the image_size this Conv4 was built for)")
        return self.classifier(self.features(x).flatten(1))
