"""Fixed networks for retraining and evaluation: a network from a genotype, and a builder.

:class:`NetworkFromGenotype` has the supernet's macro-structure (stem, cells with
reductions at 1/3 and 2/3 of the depth, global pooling, linear) with the discrete cells
of a genotype. BatchNorms are affine and use batch statistics only (MAML style).
"""
import os

import torch
import torch.nn as nn

from ..errors import GenotypeError
from ._conv import use_whole_call_convolutions
from .conv4 import Conv4
from .genotypes import NAMED_GENOTYPES, STEPS, Genotype, load_genotype, named_genotype, validate_genotype
from .macro import CellPlan, cell_plan, check_positive, make_preprocess, make_stem, reduction_indices
from .operations import make_op


class FixedCell(nn.Module):
    """A cell built from one half of a genotype: each node sums its two chosen ops.

    Shapes: ``s0 [B, C_pp, H0, W0]``, ``s1 [B, C_p, H, W]`` -> ``[B, len(concat) * C, H', W']``
    (``H' = ceil(H / 2)`` in a reduction cell, which uses two copies of ``s1``).
    """

    def __init__(self, pairs, concat, C_pp, C_p, C, reduction, reduction_prev):
        super().__init__()
        self.reduction = reduction
        self.inputs = [j for _, j in pairs]
        self.concat = list(concat)
        self.pre0, self.pre1 = make_preprocess(CellPlan(reduction, reduction_prev, C_pp, C_p, C), affine=True)
        self.ops = nn.ModuleList(make_op(name, C, 2 if reduction and j < 2 else 1, affine=True)
                                 for name, j in pairs)

    def forward(self, s0, s1):
        if self.reduction:
            s0 = s1
        states = [self.pre0(s0), self.pre1(s1)]
        for k in range(len(self.ops) // 2):
            a, b = 2 * k, 2 * k + 1
            states.append(self.ops[a](states[self.inputs[a]]) + self.ops[b](states[self.inputs[b]]))
        return torch.cat([states[i] for i in self.concat], 1)


class NetworkFromGenotype(nn.Module):
    """The network a genotype describes, for retraining with MAML and evaluation.

    stem (3x3 conv to ``stem_multiplier * C`` channels, BN) -> ``layers`` fixed cells
    (reductions at :func:`~bayesnas.models.macro.reduction_indices`: channels x2,
    resolution /2) -> global average pooling -> linear.
    ``forward(x [B, in_channels, H, W]) -> logits [B, num_classes]``; any ``H, W`` >= 1.
    BatchNorms are affine, without running statistics.
    """

    def __init__(self, genotype, in_channels=1, num_classes=5, C=16, layers=5, steps=STEPS,
                 stem_multiplier=3):
        super().__init__()
        check_positive(in_channels=in_channels, num_classes=num_classes, C=C, layers=layers,
                       steps=steps, stem_multiplier=stem_multiplier)
        self.genotype = validate_genotype(genotype, steps=steps)
        self.in_channels = in_channels
        self.reductions = reduction_indices(layers)
        self.stem = make_stem(in_channels, stem_multiplier * C, affine=True)
        concats = {False: genotype.normal_concat, True: genotype.reduce_concat}
        plan, C_p = cell_plan(C, layers, stem_multiplier, lambda reduction: len(concats[reduction]))
        cells = [FixedCell(genotype.reduce if p.reduction else genotype.normal, concats[p.reduction],
                           p.C_pp, p.C_p, p.C, p.reduction, p.reduction_prev) for p in plan]
        self.cells = nn.ModuleList(cells)
        self.classifier = nn.Linear(C_p, num_classes)
        # second-order MAML differentiates the convolutions twice: PyTorch's double backward of a
        # grouped (depthwise) one loops over the groups, models/_conv.py's is whole calls
        use_whole_call_convolutions(self)

    def forward(self, x):
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"x has shape {tuple(x.shape)}, expected [B, {self.in_channels}, H, W]")
        s0 = s1 = self.stem(x)
        for cell in self.cells:
            s0, s1 = s1, cell(s0, s1)
        return self.classifier(s1.mean((2, 3)))


def build_network(name_or_genotype: str | Genotype, in_channels: int = 1, num_classes: int = 5, image_size: int = 28,
                  C: int = 16, layers: int = 5, hidden: int = 64) -> torch.nn.Module:
    """Build the network to retrain: ``"conv4"``, a named genotype, a Genotype, or a JSON path.

    ``"conv4"`` gives :class:`~bayesnas.models.conv4.Conv4` (``hidden`` channels; ``C`` and
    ``layers`` do not apply); anything else a :class:`NetworkFromGenotype` with ``C`` and
    ``layers`` (``image_size`` does not apply: it pools globally). A string that is neither
    ``conv4`` nor a known name is read as a genotype JSON file; errors are
    :class:`GenotypeError` naming the input.
    """
    if isinstance(name_or_genotype, Genotype):
        genotype = name_or_genotype
    elif isinstance(name_or_genotype, (str, os.PathLike)):
        spec = os.fspath(name_or_genotype)
        key = spec.strip().lower()
        if key == "conv4":
            return Conv4(in_channels, num_classes, hidden=hidden, image_size=image_size)
        if key in NAMED_GENOTYPES:
            genotype = named_genotype(key)
        elif os.path.exists(spec) or spec.endswith(".json"):
            genotype = load_genotype(spec)
        else:
            raise GenotypeError(f"{spec!r}: expected 'conv4', a named genotype "
                                f"({', '.join(sorted(NAMED_GENOTYPES))}) or a genotype JSON file")
    else:
        raise GenotypeError(f"expected 'conv4', a genotype name, a Genotype or a JSON path; "
                            f"got {type(name_or_genotype).__name__}")
    return NetworkFromGenotype(genotype, in_channels=in_channels, num_classes=num_classes, C=C,
                               layers=layers)
