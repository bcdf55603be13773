"""How decided a search's meta-level edge posterior is: what ``fit`` records at every logged step.
"""
from typing import NamedTuple

import torch

from ..models.derivation import derive_genotype, edge_tensor
from ..models.genotypes import genotype_string


class SearchDiagnostics(NamedTuple):
    """How decided a meta-level edge posterior is, over all 28 edges of both cell types.

    edge_entropy_mean, edge_entropy_max: the mean and largest per-edge entropy in nats
    (``log(10) = 2.303`` is uniform); top_prob_mean: the mean over edges of the most
    probable op's probability (0.1 is uniform, 1 is decided); genotype: the derived
    genotype as :func:`~bayesnas.models.genotypes.genotype_string`; genotype_changed: 1
    if it differs from the previous logged one, else 0 (0 when there is none).
    ``fit`` writes these at every logged step to ``metrics.csv`` and the posterior history.

    """

    edge_entropy_mean: float
    edge_entropy_max: float
    top_prob_mean: float
    genotype: str
    genotype_changed: int


def edge_logits(value, name):
    """``value`` as detached CPU float32 logits ``[14, 10]``; a ValueError naming ``name`` for another shape."""
    return edge_tensor(value, name)


def entropy(log_probs):
    """Entropy in nats of categorical distributions given by their log-probabilities ``[..., K]`` -> ``[...]``."""
    return -(log_probs.exp() * log_probs).sum(-1)


def search_diagnostics(logits_normal, logits_reduce, previous=None):
    """:class:`SearchDiagnostics` of the edge logits of both cell types (``[14, 10]`` each).

    ``previous``: the genotype string of the last logged step (None: none, so unchanged).
    """
    logits = [edge_logits(logits_normal, "logits_normal"), edge_logits(logits_reduce, "logits_reduce")]
    edge_entropy = torch.cat([entropy(l.log_softmax(-1)) for l in logits])
    probs = [l.softmax(-1) for l in logits]
    top = torch.cat([p.max(-1).values for p in probs])
    genotype = genotype_string(derive_genotype(*probs))
    return SearchDiagnostics(float(edge_entropy.mean()), float(edge_entropy.max()), float(top.mean()), genotype,
                             int(previous is not None and genotype != previous))
