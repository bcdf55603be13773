"""How decided a search's meta-level edge posterior is: what ``fit`` records at every logged step,
and whether a cell derived from it means anything (:func:`undecided_warning`).
"""
from typing import NamedTuple, Optional

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
    edge_entropy = torch.cat([entropy(x.log_softmax(-1)) for x in logits])
    probs = [x.softmax(-1) for x in logits]
    top = torch.cat([p.max(-1).values for p in probs])
    genotype = genotype_string(derive_genotype(*probs))
    return SearchDiagnostics(float(edge_entropy.mean()), float(edge_entropy.max()), float(top.mean()), genotype,
                             int(previous is not None and genotype != previous))


#: below this mean top-op probability (uniform: 0.1) the edge posterior has not left its prior
UNDECIDED_TOP_PROB = 0.11


def undecided_warning(iteration, arch_warmup, arch_lr, top_prob_mean=None) -> Optional[str]:
    """Why a cell derived at ``iteration`` from a fit run's alpha is noise, or None when nothing says so.

    alpha starts near uniform (``1e-3 * randn``) and is not stepped during the first
    ``arch_warmup`` iterations (nor ever with ``arch_lr`` 0): a run that stops there derives
    its cell from a uniform posterior, by its tiny initial noise. ``top_prob_mean`` (the mean
    over the 28 edges of the most probable op's probability; uniform 0.1) below
    :data:`UNDECIDED_TOP_PROB` says the posterior has barely left its prior.

    >>> undecided_warning(3, arch_warmup=20, arch_lr=0.1)[:36]
    'alpha was never stepped (iteration 3'
    >>> undecided_warning(500, arch_warmup=20, arch_lr=0.1, top_prob_mean=0.2) is None
    True
    """
    if iteration <= arch_warmup or arch_lr == 0:
        why = (f"iteration {iteration}, within the architecture warm-up of {arch_warmup} iterations"
               if arch_lr != 0 else "arch_lr is 0")
        return (f"alpha was never stepped ({why}): the edge posterior is its near-uniform start, and a cell "
                f"derived from it is noise; train past --arch-warmup before deriving a cell from alpha, or pick one "
                f"with the meta-network: derive-cell --by score (weight-sharing random search)")
    if top_prob_mean is not None and top_prob_mean < UNDECIDED_TOP_PROB:
        return (f"the edge posterior has barely left its prior (mean top-op probability {top_prob_mean:.3f}, "
                f"uniform 0.100): a cell derived from it is close to noise; train longer")
    return None
