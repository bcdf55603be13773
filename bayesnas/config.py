"""Configuration dataclasses and their precedence: CLI > config file > defaults.

Every field carries its help text and, where it has them, its allowed values and range in
``dataclasses.field(metadata=...)``; the ``fit`` and ``retrain`` commands build one flag
per field from them (:mod:`bayesnas.cli.options`), so the flags cannot drift from the
settings. This module imports neither torch nor Pyro.

Example:

>>> cfg = resolve_config(FitConfig, overrides={"iterations": 50, "variant": None})
>>> cfg.iterations, cfg.variant            # None: not given, the default stays
(50, 'gumbel')
>>> cfg.extended(100).schedule_iterations  # an extended run keeps its temperature schedule
50
"""
import dataclasses
import math
import os

from .errors import ConfigError
from .fileio import read_json


def resolve_config(cls, config_file=None, overrides=None):
    """Build ``cls`` from defaults, then a JSON ``config_file``, then ``overrides`` (None values skipped)."""
    values = {}
    if config_file is not None:
        values.update(load_config_file(config_file, cls))
    values.update({k: v for k, v in (overrides or {}).items() if v is not None})
    return from_dict(cls, values, source=config_file or "arguments")


def load_config_file(path, cls):
    """Read a JSON config file (a flat object of field names) with clear errors."""
    if not os.path.lexists(path):
        raise ConfigError(f"{path}: config file not found")
    data = read_json(path, ConfigError, "config file")
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
    cfg = cls(**values).resolved()
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


def setting(default, help, choices=None, min=None, min_open=False, flag=None, max=None, each=None):
    """A config field: its default, its help text, and (for the CLI and validate) choices and bounds.

    ``flag``: the CLI's spelling when it is not ``--field-name`` (``--on/--off`` for a bool).
    ``each``: for a ``tuple`` field, what one item is: a ``(type, noun)`` pair such as
    ``(int, "seed")``; the choices and bounds then hold for each item, each item may appear
    once, and the CLI takes the items comma-separated (``--seeds 0,1,2``).
    """
    metadata = {"help": help}
    if each is not None:
        metadata["each"] = tuple(each)
    if flag is not None:
        metadata["flag"] = flag
    if choices is not None:
        metadata["choices"] = tuple(choices)
    if min is not None:
        metadata["min"], metadata["min_open"] = min, min_open
    if max is not None:
        metadata["max"] = max
    return dataclasses.field(default=default, metadata=metadata)


def resume_overrides(overrides, config_file=None):
    """The settings a resumed run takes from the command line: ``iterations`` (raise its budget),
    ``device`` (move it: by default a run continues on the device it was made on) and
    ``precision`` (by default the run's own).

    Args:
        overrides: dict of the settings given (None values: not given); config_file: a
            config file given alongside (refused: a resumed run keeps its own config).

    Returns:
        a dict of those given, e.g. ``{"iterations": N}`` or ``{}``.

    Raises:
        ConfigError: naming the rule, when anything else is given.
    """
    given = {k: v for k, v in overrides.items() if v is not None}
    if sorted(set(given) - {"iterations", "device", "precision"}) or config_file:
        raise ConfigError("--resume continues a run with its own config; only --iterations, --device and "
                          "--precision may be given")
    return given


def check_seed(value, what="seed"):
    """``value`` as an int seed in 0..:data:`MAX_SEED`, else a ConfigError naming ``what``."""
    check(isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_SEED,
          f"{what}={value!r}: expected an integer from 0 to {MAX_SEED}")
    return value


def check(condition, message):
    """Raise ConfigError(message) unless ``condition``."""
    if not condition:
        raise ConfigError(message)


def check_settings(cfg):
    """Check every field of a config dataclass against its declaration (:func:`setting`)."""
    for field in dataclasses.fields(cfg):
        check_field(field, getattr(cfg, field.name))


def check_field(field, value):
    """Check one value of a config field against its declaration (:func:`setting`).

    An integer field holds an integer (not a bool), a number field a finite number, a field
    with choices one of them, a field with bounds a value within them. None passes where
    None is the default (it means "decide from the data" or "the same as another setting").
    A tuple field with ``each`` holds a list or tuple whose items pass those checks, each once.
    """
    meta = field.metadata
    if value is None and field.default is None:
        return
    if "each" in meta:
        kind, noun = meta["each"]
        check(isinstance(value, (list, tuple)), f"{field.name}={value!r}: expected a list of {noun}s")
        for item in value:
            _check_value(field.name, kind, meta, item)
        check(len(set(value)) == len(value),
              f"{field.name}={list(value)}: expected each {noun} once")
        return
    _check_value(field.name, field.type, meta, value)


def _check_value(name, kind, meta, value):
    if kind is int:
        check(isinstance(value, int) and not isinstance(value, bool), f"{name}={value!r}: expected an integer")
    if kind is float:
        check(isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value),
              f"{name}={value!r}: expected a finite number")
    if "choices" in meta:
        check(value in meta["choices"], f"{name}={value!r}: expected {' or '.join(map(repr, meta['choices']))}")
    if "min" in meta:
        low, strict = meta["min"], meta["min_open"]
        what = "an integer" if kind is int else "a number"
        check(value > low if strict else value >= low,
              f"{name}={value!r}: expected {what} {'>' if strict else '>='} {low}")
    if "max" in meta:
        what = "an integer" if kind is int else "a number"
        check(value <= meta["max"], f"{name}={value!r}: expected {what} <= {meta['max']}")


#: the largest seed a user may give: torch.manual_seed takes 0 .. 2**64 - 1, and runs derive
#: further streams from seed + small offsets
MAX_SEED = 2**63 - 1
#: the largest image side a search proxy may resize to (the importers' bound too)
from .data.imaging import MAX_IMAGE_SIZE  # noqa: E402

#: the values of FitConfig.variant, arch_schedule and supernet, and of both configs' select_on
VARIANTS = ("gumbel", "softmax")
#: the values of FitConfig.edge_kl (bayesnas.inference.elbo.EDGE_KLS; this module imports no torch)
EDGE_KLS = ("relaxed", "categorical")
ARCH_SCHEDULES = ("constant", "cosine")
SUPERNETS = ("fused", "reference")
from .data.protocol import SELECT_ON  # noqa: E402  (the one list of selection splits)

DEVICE_HELP = "auto, cpu, cuda or cuda:N (auto: CUDA when present)"
DETERMINISTIC_HELP = ("deterministic algorithms only (torch.use_deterministic_algorithms, cuDNN deterministic, not "
                      "benchmarking, CUBLAS_WORKSPACE_CONFIG): a GPU run then repeats bitwise; slower on a GPU, free "
                      "on a CPU, whose kernels are deterministic already. An op without such a kernel stops the run")
#: the values of both configs' precision (bayesnas.device.autocast)
PRECISIONS = ("fp32", "bf16")
PRECISION_HELP = ("the networks' forward: 'fp32', or 'bf16' (torch.autocast with bfloat16, CPU and CUDA: the "
                  "convolutions and matmuls in bfloat16; weights, optimiser, KL terms, log-probabilities and "
                  "losses stay float32). A resumed run keeps its own unless given")


@dataclasses.dataclass
class TaskSettings:
    """The few-shot tasks a run trains and validates on: the settings FitConfig and RetrainConfig share."""

    data: str = setting(None, "HDF5 data file; None = the embedded Omniglot set")
    ways: int = setting(5, "classes per task", min=2)
    shots: int = setting(1, "support images per class", min=1)
    queries: int = setting(5, "query images per class", min=1)
    rotations: bool = setting(None, "90-degree rotations as new training classes; None: on for an Omniglot file "
                                    "only (from its source), off otherwise. The run's config.json records the "
                                    "value used")
    select_on: str = setting("val", "the split that validates and picks checkpoint_best.pt: 'val'; 'test' only on "
                                    "explicit request (a file without validation classes): the run is marked, and "
                                    "evaluate and compare warn", choices=SELECT_ON)

    def validate(self):
        """ConfigError naming the first setting out of its declared type, choices or bounds."""
        check_settings(self)

    def resolved(self):
        """A new config with each setting in its canonical form (the receiver is never changed)."""
        return dataclasses.replace(self)

    def to_dict(self):
        return dataclasses.asdict(self)


def redefault(cls, name, default, help=None, flag=None):
    """The field ``name`` of dataclass ``cls`` declared again with another default (and help), its
    choices and bounds kept: how a config states a default of its own for a shared setting."""
    declared = {f.name: f for f in dataclasses.fields(cls)}[name]
    metadata = dict(declared.metadata)
    if help is not None:
        metadata["help"] = help
    if flag is not None:
        metadata["flag"] = flag
    return dataclasses.field(default=default, metadata=metadata)


@dataclasses.dataclass
class SessionSettings(TaskSettings):
    """The settings every training session has, ``fit``'s and ``retrain``'s, declared once.

    Their bounds and checks are the same in both configs; where the defaults differ, each config
    states its own with :func:`redefault` and says why (a search supernet and a retrained network
    differ in size and cost per iteration, and the two defaults were measured separately).
    """

    tasks: int = setting(2, "tasks per meta-iteration", min=1)
    inner_steps: int = setting(5, "inner steps on each task's support set", min=0)
    iterations: int = setting(500, "meta-iterations", min=1)
    channels: int = setting(16, "the network's width", min=1)
    first_order: bool = setting(False, "first-order meta-gradient (detached inner gradients)")
    low_memory: bool = setting(False, "memory-bounded step: backward one task at a time, inner steps recomputed in "
                                      "the outer backward (same gradients; memory independent of tasks and inner "
                                      "steps)")
    meta_lr: float = setting(1e-3, "Adam step size of the meta-parameters", min=0, min_open=True)
    grad_clip: float = setting(10.0, "max global norm of the meta-gradient (0 = no clipping)", min=0)
    val_every: int = setting(50, "iterations between validations", min=1)
    val_tasks: int = setting(40, "validation tasks", min=1)
    checkpoint_every: int = setting(50, "iterations between checkpoints", min=1)
    seed: int = setting(0, "seed of the task streams and of the initial parameters", min=0, max=MAX_SEED)
    device: str = setting("auto", DEVICE_HELP)
    deterministic: bool = setting(False, DETERMINISTIC_HELP)
    precision: str = setting("fp32", PRECISION_HELP, choices=PRECISIONS)
    threads: int = setting(0, "torch CPU threads (0 = torch's default)", min=0)


@dataclasses.dataclass
class FitConfig(SessionSettings):
    """Every setting of ``bayesnas fit`` (defaults: a CPU-sized version of the paper's search).

    The paper's search: 10,000 iterations, 2 tasks per iteration, 4 inner steps, 5-way. The
    defaults temper the weight KL (kl_weight 0.001, sigma_init 0.01) and take first-order
    meta-gradients so that a plain ``bayesnas fit`` learns in minutes on a CPU; the paper's
    untempered, second-order objective is ``kl_weight=1.0, first_order=False`` (docs/model.md,
    "Choosing the KL weight").
    """

    image_size: int = setting(None, "search on images resized to this size (None: the data's own); a smaller proxy "
                                    "costs about the pixel ratio less, and the derived cell is retrained at full size",
                              min=1, max=MAX_IMAGE_SIZE)
    # a search supernet costs many times a retrained network per iteration: a shorter, narrower default
    tasks: int = redefault(SessionSettings, "tasks", 2, "T, tasks per meta-iteration")
    inner_steps: int = redefault(SessionSettings, "inner_steps", 4, "N, unrolled steps of the guide")
    iterations: int = redefault(SessionSettings, "iterations", 200)
    channels: int = redefault(SessionSettings, "channels", 4, "C of the search supernet")
    cells: int = setting(3, "cells of the search supernet", min=1)
    supernet: str = setting("fused", "the supernet's implementation: 'fused' (a few large calls per cell) or "
                                     "'reference' (one module per op per edge, as DARTS writes it: the same "
                                     "function, many times slower)", choices=SUPERNETS)
    variant: str = setting("gumbel", "edge variables: 'gumbel' (relaxed categorical z) or 'softmax' "
                                     "(z = softmax(phi))", choices=VARIANTS)
    edge_kl: str = setting("relaxed", "the edge KL: 'relaxed' (Monte-Carlo estimate of the relaxed-categorical KL; "
                                      "0 in the softmax variant; sends no gradient to alpha with first-order steps) "
                                      "or 'categorical' (closed-form KL between softmax(phi) and softmax(alpha), "
                                      "the paper's Categorical(alpha) prior; both variants)", choices=EDGE_KLS)
    z_per_example: bool = setting(False, "one relaxed sample of the edge variables per image instead of one per task "
                                         "(the relaxed KL is the mean of the images' estimates); the fused supernet "
                                         "only")
    straight_through: bool = setting(False, "straight-through edge variables (GDAS): the network sees the one-hot "
                                            "argmax of z, the gradient is that of the relaxed z; the KL is unchanged")
    inner_tau_end: float = setting(None, "within-task annealing (MetaNAS): the guide's inner steps lower the "
                                         "temperature geometrically from the iteration's tau toward this, and the "
                                         "query ELBO and predictions use it (None: every step at tau)",
                                   min=0, min_open=True)
    prune_below: float = setting(0.0, "remove the ops whose prior probability softmax(alpha) is below this from the "
                                      "prior and the guide, recomputed every step (an edge keeps its most probable "
                                      "op; 0: none)", min=0, max=0.5)
    tau_start: float = setting(1.0, "temperature at the first iteration", min=0, min_open=True)
    tau_end: float = setting(0.3, "temperature after the exponential decay from tau_start over "
                                  "schedule_iterations", min=0, min_open=True)
    schedule_iterations: int = setting(None, "iterations the temperature decays over (None: iterations). Extending "
                                             "a finished run (--resume --iterations N) sets it to the old budget, so "
                                             "tau stays at tau_end from there on instead of jumping back up", min=1)
    sigma_init: float = setting(0.01, "initial prior scale of every weight; with the guide's proximal mean step the "
                                     "mean moves at most ~n_s * sigma^2 per unit gradient, so sigma also sets how "
                                     "far a task can adapt", min=0, min_open=True)
    inner_lr_mu: float = setting(0.4, "inner step size of the weight means (the MAML paper's Omniglot step size)",
                                 min=0, min_open=True)
    inner_lr_rho: float = setting(0.1, "inner step size of the weight scales", min=0, min_open=True)
    inner_lr_alpha: float = setting(1.0, "inner step size of the edge logits", min=0, min_open=True)
    learn_inner_lr: bool = setting(False, "meta-learn the three inner step sizes")
    # first-order by default: the search learns in minutes on a CPU (the class docstring)
    first_order: bool = redefault(SessionSettings, "first_order", True,
                                  "drop the second-order terms of the meta-gradient (the inner gradients are "
                                  "detached); off (--second-order) is the paper's full unrolled meta-gradient, "
                                  "about 2.3x the cost per iteration", flag="--first-order/--second-order")
    batch_tasks: bool = setting(True, "run a meta-batch's tasks as one batched supernet call (task-major channels, "
                                      "the same function in float64). Off: one call and one backward per task, "
                                      "whose results agree across process counts (tested to rtol 1e-4)")
    low_memory: bool = redefault(SessionSettings, "low_memory", False,
                                 "memory-bounded SVI step: one task at a time (backward per task) and inner steps "
                                 "recomputed in the outer backward; same values and gradients, peak memory of one "
                                 "task's query pass plus one inner step instead of T tasks times N steps")
    set_encoder: bool = setting(False, "start the edge logits phi at alpha + h_V(support set)")
    kl_weight: float = setting(0.001, "weight of the KL terms (1 = the full ELBO, the paper; smaller tempers them)",
                               min=0)
    kl_anneal: int = setting(0, "iterations of linear warm-up of the KL weight from 0 (0 = none)", min=0)
    # mu and sigma of every weight learn at a larger step than a retrained network's weights
    meta_lr: float = redefault(SessionSettings, "meta_lr", 3e-3, "Adam step size of mu, sigma (and h_V, inner step "
                                                                  "sizes)")
    arch_lr: float = setting(0.1, "Adam step size of alpha (short CPU runs; DARTS used 3e-4 over far longer runs)",
                             min=0, min_open=True)
    arch_warmup: int = setting(20, "iterations at the start in which alpha is not stepped (the weights learn first, "
                                  "as in DARTS-style warm-ups); the KL and likelihood still see alpha's value", min=0)
    arch_schedule: str = setting("cosine", "alpha's step size after the warm-up: 'constant' (arch_lr) or 'cosine' "
                                             "(arch_lr decayed to 0 by a half cosine over the rest of "
                                             "schedule_iterations, or of iterations)", choices=ARCH_SCHEDULES)
    # a search validates often to draw its learning curve: fewer tasks per validation
    val_tasks: int = redefault(SessionSettings, "val_tasks", 20)
    val_samples: int = setting(4, "posterior samples averaged per validation prediction", min=1)
    log_every: int = setting(10, "iterations between entries of the edge-posterior history", min=1)
    # its default run is 200 iterations: a checkpoint every 20 keeps a killed run's loss small
    checkpoint_every: int = redefault(SessionSettings, "checkpoint_every", 20)
    threads: int = redefault(SessionSettings, "threads", 1,
                             "torch CPU threads (0 = torch's default). 1 by default: two threads measured 1.0-1.2x "
                             "faster on an idle 2-core machine but contend badly when anything else runs "
                             "(docs/design.md §5)")

    def validate(self):
        check_settings(self)
        check(not (self.z_per_example and self.supernet == "reference"),
              "z_per_example=True: one edge sample per image needs supernet='fused'; the reference supernet takes "
              "one per task")

    @property
    def schedule_span(self):
        """The iterations the temperature and arch step-size schedules are laid out over."""
        return self.schedule_iterations or self.iterations

    def extended(self, iterations):
        """This config with its budget raised to ``iterations``, the schedules kept continuous.

        The temperature keeps decaying over the budget it was laid out over, and stays at
        tau_end after it; the arch step size stays where its schedule ended; the KL warm-up
        counts absolute iterations and needs nothing.
        """
        return dataclasses.replace(self, iterations=iterations, schedule_iterations=self.schedule_span)


@dataclasses.dataclass
class RetrainConfig(SessionSettings):
    """Every setting of ``bayesnas retrain`` (defaults: CPU-sized, the paper's MAML settings).

    The paper retrains with second-order MAML, 5 inner steps and 2 tasks per
    meta-batch, for 30,000 iterations at full width. The defaults keep its inner loop and
    shrink the network and the run (docs/benchmarks.md has their measured cost).
    """

    queries: int = redefault(TaskSettings, "queries", 15)  # the MAML paper's 15
    arch: object = setting("conv4", "'conv4', 'darts_v2', or a genotype as a dict (genotype JSON)")
    tasks: int = redefault(SessionSettings, "tasks", 2, "tasks per meta-batch")
    inner_steps: int = redefault(SessionSettings, "inner_steps", 5, "MAML inner steps")
    inner_lr: float = setting(0.4, "MAML inner step size (the MAML paper's Omniglot step size)", min=0, min_open=True)
    eval_inner_steps: int = setting(None, "inner steps at validation/test time; None = inner_steps", min=0)
    first_order: bool = redefault(SessionSettings, "first_order", False, "first-order MAML (detached inner "
                                                                         "gradients)")
    channels: int = redefault(SessionSettings, "channels", 16, "Conv-4 filters, or the first cell's channels C of "
                                                               "a genotype network")
    layers: int = setting(3, "cells of a genotype network (reductions at 1/3 and 2/3); Conv-4 ignores it", min=1)

    def validate(self):
        from .models.genotypes import arch_config  # a genotype file or run folder is read here

        arch_config(self.arch)  # a GenotypeError names what is wrong with it
        check_settings(self)

    def resolved(self):
        """A new config whose ``arch`` is in config form ("conv4", "darts_v2" or a genotype dict): a
        genotype file or fit run folder is read here, once."""
        from .models.genotypes import arch_config

        return dataclasses.replace(self, arch=arch_config(self.arch))

    @property
    def test_inner_steps(self):
        """Inner steps used when validating and evaluating."""
        return self.inner_steps if self.eval_inner_steps is None else self.eval_inner_steps

    def extended(self, iterations):
        """This config with its budget raised to ``iterations`` (MAML has no schedule to keep)."""
        return dataclasses.replace(self, iterations=iterations)


@dataclasses.dataclass(frozen=True)
class CompareSettings:
    """Every setting of ``bayesnas compare`` besides the shared :class:`RetrainConfig`: what is
    compared (the rows), on which test tasks and seeds, at which widths, for how long.

    The ``compare`` command builds one flag per field, as ``fit`` does from :class:`FitConfig`;
    :func:`bayesnas.analysis.compare.compare` takes an instance (or the fields as keywords).

    >>> s = resolve_config(CompareSettings, overrides={"seeds": [0, 1], "random_cells": 2})
    >>> s.seeds, s.random_cells, s.eval_tasks
    ([0, 1], 2, 600)
    """

    random_cells: int = setting(5, "random cells from the search space (each node: two distinct inputs, a "
                                   "non-'none' op on each, as derive-cell keeps)", min=0)
    baselines: tuple = setting(("darts_v2", "conv4"), "named architectures, comma-separated ('' for none)",
                               each=(str, "baseline"))
    seeds: tuple = setting((0,), "training seeds, comma-separated; every architecture is trained once per seed",
                           min=0, max=MAX_SEED, each=(int, "seed"))
    eval_tasks: int = setting(600, "test tasks per run (the same seeded tasks for every run)", min=1)
    eval_seed: int = setting(0, "seed of the test tasks", min=0, max=MAX_SEED)
    random_seed: int = setting(0, "seed of the random cells", min=0, max=MAX_SEED)
    match_params: bool = setting(True, "choose each architecture's width so its trainable parameters are within "
                                       "±10% of param_target; off: every row at channels")
    param_target: int = setting(None, "trainable parameters every row is matched to (None: the largest row's count "
                                      "at channels)", min=1)
    workers: int = setting(1, "runs trained and evaluated at once, one process each (each with threads torch "
                              "threads, or an equal share of the cores when threads is 0); same results as one at "
                              "a time", min=1)
    max_iterations: int = setting(None, "train every run until validation has plateaued: iterations first, then "
                                        "extend_by more at a time while its val rise is above 0.02, at most this "
                                        "many (None: a fixed budget)", min=1)
    extend_by: int = setting(200, "with max_iterations: iterations added at a time", min=1)

    def validate(self):
        # before the per-field checks: the library's message says why a seed may appear once
        check(isinstance(self.seeds, (list, tuple)) and len(self.seeds) > 0
              and len(set(map(repr, self.seeds))) == len(self.seeds),
              f"seeds={self.seeds}: expected at least one seed, each once (a seed's runs share one folder)")
        check_settings(self)
        check(self.match_params or self.param_target is None,
              f"param_target={self.param_target}: a parameter target needs matching on (drop --no-match-params)")

    def resolved(self):
        """A new settings object (all of its settings are in canonical form already)."""
        return dataclasses.replace(self)

    def to_dict(self):
        return dataclasses.asdict(self)
