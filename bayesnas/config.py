"""Configuration dataclasses and their precedence: CLI > config file > defaults.

Usage::

    cfg = resolve_config(FitConfig, config_file="my.json", overrides={"iterations": 50})
    cfg.to_dict()      # what is written to RUN_DIR/config.json
"""
import dataclasses
import json
import os

from .errors import ConfigError


def resolve_config(cls, config_file=None, overrides=None):
    """Build ``cls`` from defaults, then a JSON ``config_file``, then ``overrides`` (None values skipped)."""
    values = {}
    if config_file is not None:
        values.update(load_config_file(config_file, cls))
    values.update({k: v for k, v in (overrides or {}).items() if v is not None})
    return from_dict(cls, values, source=config_file or "arguments")


def load_config_file(path, cls):
    """Read a JSON config file (a flat object of field names) with clear errors."""
    if not os.path.exists(path):
        raise ConfigError(f"{path}: config file not found")
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a JSON object of {cls.__name__} fields")
    return data


def from_dict(cls, values, source="<dict>"):
    """Instantiate dataclass ``cls`` from ``values``, rejecting unknown keys and wrong types, then validate."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ConfigError(f"{source}: unknown setting(s) {', '.join(unknown)}; valid: {', '.join(sorted(fields))}")
    for name, value in values.items():
        _check_type(fields[name], value, source)
    cfg = cls(**values)
    cfg.validate()
    return cfg


_TYPE_NAMES = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}


def _check_type(field, value, source):
    """A setting's value must have its field's type (a JSON "false" string is not false)."""
    kind = field.type
    if kind not in _TYPE_NAMES or (value is None and field.default is None):
        return
    if kind is bool:
        ok = isinstance(value, bool)
    elif kind is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    else:
        ok = isinstance(value, kind) and not (kind is int and isinstance(value, bool))
    if not ok:
        raise ConfigError(f"{source}: {field.name}={value!r}: expected {_TYPE_NAMES[kind]}")


def check(condition, message):
    """Raise ConfigError(message) unless ``condition``."""
    if not condition:
        raise ConfigError(message)


@dataclasses.dataclass
class FitConfig:
    """Every setting of ``bayesnas fit`` (defaults: a CPU-sized version of the paper's search).

    The paper's search: 10,000 iterations, 2 tasks per iteration, 4 inner steps, 5-way. The
    defaults temper the weight KL (kl_weight 0.001, sigma_init 0.01) and take first-order
    meta-gradients so that a plain ``bayesnas fit`` learns in minutes on a CPU; the paper's
    untempered, second-order objective is ``kl_weight=1.0, first_order=False`` (README,
    "Choosing the KL weight").
    """

    data: str = None  #: HDF5 data file; None = the embedded Omniglot set
    ways: int = 5
    shots: int = 1
    queries: int = 5
    #: 90-degree rotations as new training classes; None: on for an Omniglot file only
    #: (from its ``source``), off otherwise. The run's config.json records the value used
    rotations: bool = None
    #: the split that validates and picks checkpoint_best.pt: "val"; "test" only on
    #: explicit request (a file without validation classes), and the run is marked
    select_on: str = "val"
    #: search on images resized to this size (None: the data's own); a smaller proxy
    #: costs about the pixel ratio less, and the derived cell is retrained at full size
    image_size: int = None
    tasks: int = 2  #: T, tasks per meta-iteration
    inner_steps: int = 4  #: N, unrolled steps of the guide
    iterations: int = 200
    channels: int = 4  #: C of the search supernet
    cells: int = 3
    variant: str = "gumbel"  #: "gumbel" (relaxed categorical z) or "softmax" (z = softmax(phi))
    tau_start: float = 1.0
    tau_end: float = 0.3  #: exponential decay from tau_start over schedule_iterations
    #: iterations the temperature decays over (None: iterations). Extending a finished
    #: run (``--resume --iterations N``) sets it to the old budget, so tau stays at
    #: tau_end from there on instead of jumping back up (see :meth:`extended`)
    schedule_iterations: int = None
    #: initial prior scale of every weight; with the guide's proximal mean step (guide.py)
    #: the mean moves at most ~n_s * sigma^2 per unit gradient, so sigma also sets how far
    #: a task can adapt
    sigma_init: float = 0.01
    inner_lr_mu: float = 0.4  #: the MAML paper's Omniglot step size
    inner_lr_rho: float = 0.1
    inner_lr_alpha: float = 1.0
    learn_inner_lr: bool = False
    #: drop the second-order terms of the meta-gradient (the inner gradients are detached);
    #: False is the paper's full unrolled meta-gradient, about 2.3x the cost per iteration
    first_order: bool = True
    #: run a meta-batch's tasks as one batched supernet call (task-major channels, the
    #: same function in float64). False: one call and one backward per task, whose
    #: results are bitwise equal across process counts (float32 rounds differently)
    batch_tasks: bool = True
    #: memory-bounded SVI step: one task at a time (backward per task) and inner steps
    #: recomputed in the outer backward; same values and gradients, peak memory of one
    #: task's query pass plus one inner step instead of T tasks times N steps
    low_memory: bool = False
    set_encoder: bool = False  #: start phi at alpha + h_V(D_t)
    kl_weight: float = 0.001  #: 1 = the full ELBO (the paper); smaller tempers the KL terms
    kl_anneal: int = 0  #: iterations of linear warm-up of the KL weight from 0 (0 = none)
    meta_lr: float = 3e-3  #: Adam step size of mu, sigma (and h_V, inner step sizes)
    arch_lr: float = 0.1  #: Adam step size of alpha (short CPU runs; DARTS used 3e-4 over far longer runs)
    #: iterations at the start in which alpha is not stepped (the weights learn first, as in
    #: DARTS-style warm-ups); the KL and likelihood still see alpha's current value
    arch_warmup: int = 20
    #: alpha's step size after the warm-up: "constant" (arch_lr) or "cosine" (arch_lr decayed
    #: to 0 by a half cosine over the rest of schedule_iterations, or of iterations)
    arch_schedule: str = "cosine"
    grad_clip: float = 10.0  #: max global norm of the meta-gradient (0 = no clipping)
    val_every: int = 50
    val_tasks: int = 20
    val_samples: int = 4  #: posterior samples averaged per validation prediction
    log_every: int = 10  #: iterations between entries of the edge-posterior history
    checkpoint_every: int = 20
    seed: int = 0
    device: str = "auto"
    #: torch CPU threads (0 = torch's default). 1 by default: two threads measured 1.0-1.2x
    #: faster on an idle 2-core machine but contend badly when anything else runs (DESIGN §4)
    threads: int = 1

    def validate(self):
        check(self.variant in ("gumbel", "softmax"), f"variant {self.variant!r}: expected 'gumbel' or 'softmax'")
        check(self.arch_schedule in ("constant", "cosine"),
              f"arch_schedule={self.arch_schedule!r}: expected 'constant' or 'cosine'")
        check(self.arch_warmup >= 0, f"arch_warmup={self.arch_warmup}: expected an integer >= 0")
        check(self.select_on in ("val", "test"), f"select_on={self.select_on!r}: expected 'val' or 'test'")
        for name in ("ways", "shots", "queries", "tasks", "iterations", "channels", "cells", "val_tasks",
                     "val_samples", "log_every", "checkpoint_every", "val_every"):
            check(int(getattr(self, name)) >= 1, f"{name}={getattr(self, name)}: expected an integer >= 1")
        check(self.ways >= 2, f"ways={self.ways}: a task needs at least 2 classes")
        check(self.image_size is None or (isinstance(self.image_size, int) and self.image_size >= 1),
              f"image_size={self.image_size}: expected a positive integer (or null for the data's size)")
        check(self.inner_steps >= 0, f"inner_steps={self.inner_steps}: expected >= 0")
        check(self.tau_start > 0 and self.tau_end > 0, "tau_start and tau_end must be > 0")
        check(self.schedule_iterations is None or self.schedule_iterations >= 1,
              f"schedule_iterations={self.schedule_iterations}: expected an integer >= 1 (or null: iterations)")
        check(self.sigma_init > 0, f"sigma_init={self.sigma_init}: expected > 0")
        check(self.kl_weight >= 0 and self.kl_anneal >= 0, "kl_weight and kl_anneal must be >= 0")
        check(self.threads >= 0, f"threads={self.threads}: expected >= 0")
        for name in ("inner_lr_mu", "inner_lr_rho", "inner_lr_alpha", "meta_lr", "arch_lr"):
            check(getattr(self, name) > 0, f"{name}={getattr(self, name)}: expected > 0")

    def extended(self, iterations):
        """This config with its budget raised to ``iterations``, the schedules kept continuous.

        The temperature keeps decaying over the budget it was laid out over, and stays at
        tau_end after it; the KL warm-up counts absolute iterations and needs nothing.

        Example::

            FitConfig(iterations=250).extended(500).schedule_iterations   # 250
        """
        return dataclasses.replace(self, iterations=iterations,
                                   schedule_iterations=self.schedule_iterations or self.iterations)

    def to_dict(self):
        return dataclasses.asdict(self)
