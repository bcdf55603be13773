"""The rows of a comparison: searched cells, named baselines and random cells, each with a label.

>>> [label for label, _ in architectures(random_cells=2, baselines=("conv4",))]
['conv4', 'random-1', 'random-2']
"""
import os
import random

from ..errors import ConfigError, GenotypeError
from ..models import BASELINES, arch_config, random_genotype


def _label_of(spec, taken):
    if isinstance(spec, (str, os.PathLike)):
        text = os.fspath(spec)
        if text.strip().lower() in BASELINES:
            label = text.strip().lower()
        else:
            base = os.path.normpath(text)
            label = os.path.basename(base) if os.path.isdir(base) else os.path.splitext(os.path.basename(base))[0]
            if label == "genotype" and os.path.dirname(base):
                label = os.path.basename(os.path.dirname(base))
    else:
        label = "genotype"
    label = "".join(c if c.isalnum() or c in "-_." else "_" for c in label) or "genotype"
    unique, n = label, 1
    while unique in taken:
        n += 1
        unique = f"{label}-{n}"
    return unique


def architectures(genotypes=(), random_cells=0, baselines=("darts_v2", "conv4"), random_seed=0):
    """The labelled architectures of a comparison, in table order.

    Args:
        genotypes: specs accepted by :func:`~bayesnas.models.genotypes.arch_config` (JSON
            files, fit run folders, Genotypes), or a dict label -> spec.
        random_cells: R, how many cells to draw uniformly from the space
            (:func:`~bayesnas.models.genotypes.random_genotype`, one stream seeded by
            ``random_seed``: the same R cells every time). They obey the rule
            derive-cell's cells do: two distinct input states per node, listed in
            increasing order, a non-``none`` op on each, every node concatenated.
        baselines: names among "darts_v2", "conv4".

    Returns:
        list of ``(label, arch)`` with ``arch`` in config form.
    """
    items = list(genotypes.items()) if isinstance(genotypes, dict) else [(None, g) for g in genotypes]
    out, taken = [], set()
    for label, spec in items:
        label = label or _label_of(spec, taken)
        out.append((label, arch_config(spec)))
        taken.add(label)
    for name in baselines:
        key = str(name).strip().lower()
        if key not in BASELINES:
            raise GenotypeError(f"baseline {name!r}: expected one of {', '.join(BASELINES)}")
        out.append((_label_of(key, taken), key))
        taken.add(out[-1][0])
    if isinstance(random_cells, bool) or not isinstance(random_cells, int) or random_cells < 0:
        raise ConfigError(f"random_cells={random_cells!r}: expected an integer >= 0")
    rng = random.Random(random_seed)
    for i in range(random_cells):
        label = _label_of(f"random-{i + 1}", taken)
        out.append((label, arch_config(random_genotype(rng))))
        taken.add(label)
    if not out:
        raise ConfigError("nothing to compare: give genotypes, baselines or random cells")
    return out
