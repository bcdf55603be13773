"""One flat weight vector per network, and back: the bridge to per-task weights.

The Bayesian weights ``theta ~ Normal(mu, sigma^2)`` are one flat vector per task (one
Pyro site), while the network wants a dict of shaped tensors for
``torch.func.functional_call``. :class:`ParamLayout` converts between the two; the
views it returns are differentiable, and a leading batch dimension (tasks) is kept.
"""
import math

import torch


class ParamLayout:
    """The names, shapes and offsets of a module's parameters in one flat vector.

    Parameters are laid out in ``named_parameters()`` order, each flattened row-major.
    ``flatten(dict_or_module) -> [D]``; ``unflatten(vec [..., D]) -> {name: [..., *shape]}``
    (views of ``vec``, so gradients flow back to it); ``numel`` is ``D``, ``names`` the
    parameter names, ``shapes`` their shapes.
    """

    def __init__(self, names, shapes):
        self.names = tuple(names)
        self.shapes = tuple(torch.Size(s) for s in shapes)
        if len(set(self.names)) != len(self.names):
            raise ValueError("ParamLayout: parameter names must be unique")
        if len(self.names) != len(self.shapes):
            raise ValueError("ParamLayout: one shape per name expected")
        self.numels = tuple(math.prod(s) for s in self.shapes)
        offsets, total = [], 0
        for n in self.numels:
            offsets.append(total)
            total += n
        self.offsets = tuple(offsets)
        self.numel = total

    @classmethod
    def from_module(cls, module):
        """The layout of ``module.named_parameters()``.
        """
        named = list(module.named_parameters())
        return cls([n for n, _ in named], [p.shape for _, p in named])

    def __repr__(self):
        return f"ParamLayout({len(self.names)} tensors, numel={self.numel})"

    def __len__(self):
        return len(self.names)

    def flatten(self, params):
        """Concatenate the parameters of a module or a ``{name: tensor}`` dict into ``[D]``.

        A dict may hold ``[T, *shape]`` tensors (all with the same leading ``T``); the
        result is then ``[T, D]``. Missing or mis-shaped entries raise ValueError.
        """
        if isinstance(params, torch.nn.Module):
            params = dict(params.named_parameters())
        missing = [n for n in self.names if n not in params]
        if missing:
            raise ValueError(f"ParamLayout.flatten: missing parameter(s) {missing[:5]}"
                             f"{' ...' if len(missing) > 5 else ''}")
        flat, lead = [], None
        for name, shape in zip(self.names, self.shapes, strict=True):
            t = params[name]
            k = t.dim() - len(shape)
            if k < 0 or tuple(t.shape[k:]) != tuple(shape):
                raise ValueError(f"ParamLayout.flatten: {name} has shape {tuple(t.shape)}, "
                                 f"expected [..., {', '.join(map(str, shape))}]")
            if lead is None:
                lead = tuple(t.shape[:k])
            elif tuple(t.shape[:k]) != lead:
                raise ValueError(f"ParamLayout.flatten: {name} has leading dims "
                                 f"{tuple(t.shape[:k])}, others have {lead}")
            flat.append(t.reshape(*lead, -1))
        return torch.cat(flat, dim=-1)

    def unflatten(self, vec):
        """Split ``vec [..., D]`` into ``{name: [..., *shape]}`` views (differentiable).

        Works inside ``torch.func.vmap`` (each call sees ``[D]``).
        """
        if vec.shape[-1:] != (self.numel,):
            raise ValueError(f"ParamLayout.unflatten: expected [..., {self.numel}], "
                             f"got {tuple(vec.shape)}")
        lead = vec.shape[:-1]
        # split, not slices: its backward is one cat, not a zero-filled [..., D] per tensor
        return {name: part.view(*lead, *shape)
                for name, shape, part in zip(self.names, self.shapes, vec.split(self.numels, -1), strict=True)}

    @torch.no_grad()
    def copy_to_module(self, vec, module):
        """Write ``vec [D]`` into ``module``'s parameters in place (e.g. to save ``mu`` as a net).
        """
        params = dict(module.named_parameters())
        for name, value in self.unflatten(vec).items():
            if name not in params:
                raise ValueError(f"ParamLayout.copy_to_module: module has no parameter {name}")
            params[name].copy_(value)


def count_parameters(module: torch.nn.Module, trainable_only: bool = False) -> int:
    """Number of scalar parameters of ``module`` (only those requiring grad if asked).
    """
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)
