"""TensorBoard event files of a training run (``RUN/tensorboard/``), for ``--tensorboard``.

Every logged iteration writes each numeric field of the metrics row as a scalar whose tag
is the field's name (``loss``, ``kl_z``, ``val_acc``, ...) at step = iteration; at each
validation, figures (a fit run's edge-posterior heatmap and derived cell) are written as
images; the resolved config is written once per session as hparams. A resumed run appends
to the same folder, and TensorBoard drops the steps an interrupted session had logged past
its last checkpoint, so every step appears once.

TensorBoard is an optional extra: ``pip install 'bayesnas[tensorboard]'``.
"""
import json
import math

from ..errors import ConfigError
from ..models.derivation import chosen_edges_table, derive_genotype
from ..viz.cells import plot_genotype
from ..viz.posterior import figure_to_array, plot_edge_posterior
from .diagnostics import edge_logits, search_diagnostics
from .loop import Callback

INSTALL = "pip install 'bayesnas[tensorboard]' (or: pip install tensorboard)"


def summary_writer_class():
    """torch's ``SummaryWriter``, or a :class:`~bayesnas.errors.ConfigError` saying what to install.
    """
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise ConfigError(f"--tensorboard needs the tensorboard package, which is not installed: {INSTALL}") from None
    return SummaryWriter


def hparam_values(config):
    """A config dict as TensorBoard hparams: numbers and strings kept, anything else as its JSON text.

    Bools become "true"/"false" (torch's hparams would turn them into the numbers 1 and 0).
    """
    return {k: v if isinstance(v, (int, float, str)) and not isinstance(v, bool) else json.dumps(v, sort_keys=True)
            for k, v in config.items()}


class TensorBoardLogger(Callback):
    """Writes a training loop's rows to TensorBoard event files: a :class:`~bayesnas.training.loop.Callback`.

    Args:
        log_dir: the event folder (``RUN/tensorboard``); a resumed run passes the same one.
        hparams: the resolved config (dict), written as hparams with ``metric`` as its metric.
        scalars: optional ``callable(iteration) -> dict`` of more scalars; a row's own
            field of the same name wins.
        figures: optional ``callable(iteration) -> dict tag -> matplotlib Figure``, drawn at
            each validation and written as images of ``dpi`` pixels per inch.

    The writer opens at the first row logged, with ``purge_step`` = that iteration: a
    resumed session starts at its checkpoint's iteration + 1, and TensorBoard discards
    what an earlier session had written from that step on.
    """

    def __init__(self, log_dir, hparams=None, scalars=None, figures=None, metric="val_acc", dpi=100):
        self._writer_class = summary_writer_class()
        self.log_dir = str(log_dir)
        self.hparams = dict(hparams or {})
        self.scalars = scalars
        self.figures = figures
        self.metric = metric
        self.dpi = dpi
        self.writer = None

    def _open(self, iteration):
        from torch.utils.tensorboard.summary import hparams

        self.writer = self._writer_class(self.log_dir, purge_step=iteration)
        if self.hparams:
            for summary in hparams(hparam_values(self.hparams), {self.metric: 0.0}):
                self.writer.file_writer.add_summary(summary)

    def log(self, iteration, row, validated):
        """Write ``row`` (a dict of the loop's metrics) at step ``iteration``; figures too when ``validated``."""
        if self.writer is None:
            self._open(iteration)
        values = {k: float(v) for k, v in row.items()
                  if k != "iteration" and isinstance(v, (int, float)) and not isinstance(v, bool)
                  and math.isfinite(v)}
        if self.scalars is not None:
            for key, value in self.scalars(iteration).items():
                values.setdefault(key, float(value))
        for tag, value in values.items():
            self.writer.add_scalar(tag, value, iteration)
        if validated and self.figures is not None:

            for tag, fig in self.figures(iteration).items():
                self.writer.add_image(tag, figure_to_array(fig, self.dpi), iteration, dataformats="HWC")
        # a killed process loses only what it logged after its last checkpoint, which a resume redoes
        self.writer.flush()

    def close(self):
        """Flush and close the event file (a later :meth:`log` opens a new one)."""
        if self.writer is not None:
            self.writer.close()
            self.writer = None

    def on_step(self, iteration, row, validated):
        self.log(iteration, row, validated)

    def on_end(self):
        self.close()


def edge_posterior_figures(probs, label):
    """The edge-posterior heatmap and the derived cell's picture of ``(normal, reduce)`` edge
    probabilities ``[14, 10]``, as figures keyed by image tag."""
    genotype = derive_genotype(*probs)
    return {
        "edge_posterior": plot_edge_posterior(probs, genotype, title=f"{label} (red: the derived cell)"),
        "derived_cell": plot_genotype(genotype, table=chosen_edges_table(*probs, genotype), title=label),
    }


def meta_posterior_logger(log_dir, config, meta):
    """The logger of a fit run: its rows, plus the meta-level edge posterior ``softmax(alpha)`` of ``meta``.

    Adds ``edge_entropy_mean`` and ``top_prob_mean`` (of :func:`~bayesnas.training.diagnostics.search_diagnostics`)
    to every step (unless the row holds them) and the heatmap and derived cell at every validation.
    """

    def scalars(iteration):
        d = search_diagnostics(meta.alpha_normal, meta.alpha_reduce)
        return {"edge_entropy_mean": d.edge_entropy_mean, "top_prob_mean": d.top_prob_mean}

    def figures(iteration):
        probs = [edge_logits(a, "alpha").softmax(-1) for a in (meta.alpha_normal, meta.alpha_reduce)]
        return edge_posterior_figures(probs, f"meta-level posterior, iteration {iteration}")

    return TensorBoardLogger(log_dir, hparams=config, scalars=scalars, figures=figures)
