"""The run card: ``RUN/README.md``, the page that says what a run folder holds and how to go on.

It is written atomically whenever a training session of a ``fit`` or ``retrain`` run ends,
however it ends (finished, interrupted, failed). It holds the command that made the run
(and those that continued it), package versions, device and threads, the data file with
its sha256, iterations reached of planned, final and best metrics, the derived cell with
its picture (fit, ``RUN/derived_cell.png``) or the architecture and evaluation (retrain),
and the commands to resume, derive, retrain and evaluate.

This module renders (the Markdown and the cell picture); the records it reads, ``RUN/sessions.json``
and ``RUN/evaluation.json``, are kept by :mod:`bayesnas.training.records`, so the card can be
rebuilt from the folder at any time: ``bayesnas inspect RUN`` does, and so picks up an evaluation
written later.
"""
import contextlib
import logging
import os
import shlex
from typing import List, NamedTuple, Optional, Tuple

import torch

from ..config import FitConfig, RetrainConfig
from ..data import default_data_path
from ..errors import RunError
from ..fileio import atomic_path
from ..models import NUM_EDGES, NUM_OPS, arch_label, genotype_from_dict
from ..models.derivation import chosen_edges_table, derive_genotype, format_edges_table
from ..models.genotypes import CELL_TYPES, node_lines
from ..viz.cells import plot_genotype
from ..viz.posterior import save_figure
from .diagnostics import undecided_warning
from .loop import read_run_config
from .records import (
    _COUNT,
    EVALUATION,
    SESSIONS,
    _is_count,
    _short,
    data_record,
    end_session,
    file_sha256,
    python_call,
    read_evaluation,
    read_sessions,
    start_session,
)
from .rundir import RunDirectory

# the records' names are also importable from here, where they lived before training.records
__all__ = ["CARD", "CELL_PICTURE", "RunCard", "build_run_card", "write_run_card", "recorded_session",
           "fit_cell_warning", "run_kind", "EVALUATION", "SESSIONS", "file_sha256", "python_call",
           "read_evaluation", "read_sessions"]

logger = logging.getLogger(__name__)

CARD = "README.md"
CELL_PICTURE = "derived_cell.png"


@contextlib.contextmanager
def recorded_session(run_dir, loop, command, device, data_path, processes=1, precision="fp32"):
    """Record a training session in ``RUN/sessions.json`` and write the run card when it ends.

    The block runs the loop; on any exit, finished or by an exception (which is re-raised),
    the session's end is recorded (status, iterations reached, last checkpoint) and
    ``RUN/README.md`` is written. ``run_dir`` None (the other ranks of a distributed job)
    records nothing.

    Args:
        run_dir: the run folder; loop: the :class:`~bayesnas.training.loop.TrainingLoop`
            (its ``start``, ``rows`` and ``last_checkpoint`` are read at the end).
        command: the command line or Python call that started the session.
        device: the torch device trained on; data_path: the data file (its sha256 is recorded).
        processes: the number of training processes; precision: the networks' forward ("fp32", "bf16").
    """
    if run_dir is None:
        yield
        return
    sessions, record = start_session(run_dir, loop, command, device, data_path, processes, precision)
    status = "finished"
    try:
        yield
    except BaseException as exc:
        status = f"stopped ({type(exc).__name__}{': ' + str(exc) if str(exc) else ''})"
        raise
    finally:
        try:
            end_session(run_dir, sessions, record, loop, status)
            logger.info("session %s at iteration %d", status, record["reached_iteration"])
            try:
                card = write_run_card(run_dir)
            except Exception as card_error:
                if status == "finished":
                    raise
                # raising here would hide the error that stopped the run, which is what the user must see
                logger.warning("%s not written: %s", RunDirectory(run_dir).file(CARD), card_error)
            else:
                for warning in card.warnings:
                    logger.warning("%s", warning)
        finally:
            RunDirectory(run_dir).unlock()  # taken when the session created or resumed the folder


class RunCard(NamedTuple):
    """What :func:`build_run_card` returns.

    kind: "fit" or "retrain"; status: how the last session ended; iteration: iterations
    reached; iterations: planned; checkpoint_iteration: the last checkpoint's (None:
    none yet); sessions: the records of ``sessions.json``; data_sha256: the data file's
    hash; genotype: the derived cell (fit) or trained one (retrain; None for a named
    baseline); evaluation: the dict of ``RUN/evaluation.json`` or None; markdown: the card;
    warnings: what a reader must know first (a fit whose derived cell is noise:
    :func:`~bayesnas.training.diagnostics.undecided_warning`), also on the card.
    """

    path: str
    kind: str
    status: str
    iteration: int
    iterations: int
    checkpoint_iteration: Optional[int]
    sessions: List[dict]
    data_sha256: str
    genotype: object
    evaluation: Optional[dict]
    markdown: str
    warnings: Tuple[str, ...] = ()


def run_kind(config, config_path="config.json"):
    """"fit" or "retrain", from a run's config dict; RunError for anything else."""
    if isinstance(config, dict) and "arch" in config:
        return "retrain"
    if isinstance(config, dict) and "variant" in config:
        return "fit"
    raise RunError(f"{config_path}: neither a fit nor a retrain config (no 'variant' or 'arch' setting)")


def build_run_card(run_dir):
    """The run card of a ``fit`` or ``retrain`` run folder, built from its files.

    Reads config.json, sessions.json, metrics.csv, the last checkpoint (fit: the
    meta-level edge posterior, to derive the cell) and evaluation.json when present.

    Args:
        run_dir: the run folder.

    Returns:
        :class:`RunCard` (its ``markdown`` is what ``RUN/README.md`` holds).
    """
    run = RunDirectory(run_dir)
    kind = run_kind(run.config(), run.file("config.json"))
    config = read_run_config(run, FitConfig if kind == "fit" else RetrainConfig).to_dict()
    sessions = read_sessions(run.path)
    rows = run.read_metrics() if os.path.exists(run.file("metrics.csv")) else []
    last = sessions[-1] if sessions else None
    iteration = last["reached_iteration"] if last else (int(rows[-1]["iteration"]) if rows else 0)
    state = None
    if os.path.exists(run.file("checkpoint_last.pt")):
        state = run.load_checkpoint()
    if state is not None and not _is_count(state.get("iteration")):
        raise RunError(f"{run.file('checkpoint_last.pt')}: iteration={_short(state.get('iteration'))}, expected "
                       f"{_COUNT}")
    checkpoint_iteration = state["iteration"] if state is not None else None
    status = last["status"] if last else "no session recorded (the run predates run cards)"
    data = last["data"] if last else data_record(_data_path(config))

    genotype = evaluation = None
    warnings = []
    if kind == "fit" and state is not None:
        genotype = derive_genotype(*_alpha_probs(state))
        warning = fit_cell_warning(config, state)
        if warning is not None:
            warnings.append(f"derived cell: {warning}")
    elif kind == "retrain" and isinstance(config["arch"], dict):
        genotype = genotype_from_dict(config["arch"], source=run.file("config.json"))
    if kind == "retrain" and os.path.lexists(run.file(EVALUATION)):
        evaluation = read_evaluation(run.file(EVALUATION))

    sections = [
        _header(run.path, kind, config, status, iteration, checkpoint_iteration, warnings),
        _made_by(sessions),
        _environment(last),
        _data_section(config, data, sessions),
        _metrics_section(rows),
        _fit_cell(run, state, genotype) if kind == "fit" else _retrain_section(config, genotype, evaluation),
        _commands(run.path, kind, config, iteration),
    ]
    markdown = "\n\n".join(s for s in sections if s) + "\n"
    return RunCard(run.path, kind, status, iteration, config["iterations"], checkpoint_iteration, sessions,
                   data["sha256"], genotype, evaluation, markdown, tuple(warnings))


def fit_cell_warning(config, state):
    """:func:`~bayesnas.training.diagnostics.undecided_warning` for the meta-level alpha of a fit
    checkpoint ``state``, with the run's ``config`` (a dict; settings it lacks take their defaults)."""
    defaults = FitConfig()
    probs = _alpha_probs(state)
    top = float(torch.cat([p.max(-1).values for p in probs]).mean())
    return undecided_warning(int(state["iteration"]), config.get("arch_warmup", defaults.arch_warmup),
                             config.get("arch_lr", defaults.arch_lr), top)


def write_run_card(run_dir):
    """Build the run card and write ``RUN/README.md`` atomically; for fit, draw ``RUN/derived_cell.png`` too.

    Returns:
        :class:`RunCard`.
    """
    card = build_run_card(run_dir)
    run = RunDirectory(run_dir)
    if card.kind == "fit" and card.genotype is not None:
        fig = plot_genotype(card.genotype, title=f"{os.path.basename(os.path.normpath(run.path))}: meta-level "
                                                 f"alpha, iteration {card.checkpoint_iteration}")
        save_figure(fig, run.file(CELL_PICTURE), dpi=100)
    with atomic_path(run.file(CARD)) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(card.markdown)
    return card


def _data_path(config):
    if config.get("data") is not None:
        return config["data"]
    return os.fspath(default_data_path())


def _header(path, kind, config, status, iteration, checkpoint_iteration, warnings=()):
    what = "a BASE search (`bayesnas fit`)" if kind == "fit" else "a MAML retraining (`bayesnas retrain`)"
    checkpoint = ("no checkpoint yet" if checkpoint_iteration is None
                  else f"last checkpoint at iteration {checkpoint_iteration}")
    return "\n".join([
        f"# Run card: {os.path.basename(os.path.normpath(path))}",
        "",
        f"This folder holds {what}. Settings: [config.json](config.json); one row per iteration: "
        f"[metrics.csv](metrics.csv).",
        "",
        f"- status: {status}",
        f"- iterations: {iteration} of {config['iterations']} reached; {checkpoint}",
        *(f"- **warning**: {warning}" for warning in warnings),
    ])


def _made_by(sessions):
    if not sessions:
        return "## How it was made\n\nNot recorded: the run predates run cards."
    first = sessions[0]
    if first["start_iteration"] == 0:
        lines = ["## How it was made", "", f"Started in `{first['cwd']}` by:", "", "```", first["command"], "```"]
        later = sessions[1:]
    else:
        lines = ["## How it was made", "", "The session that started it was not recorded (it predates run cards)."]
        later = sessions
    for s in later:
        lines += ["", f"Continued at iteration {s['start_iteration']} ({s['started']}, in `{s['cwd']}`) by:", "",
                  "```", s["command"], "```"]
    lines += ["", "| session | started | ended | iterations | status |", "|---|---|---|---|---|"]
    for i, s in enumerate(sessions, 1):
        status = s["status"].replace("|", "\\|").replace("\n", " ")
        lines.append(f"| {i} | {s['started']} | {s['ended'] or ''} | {s['start_iteration']} to "
                     f"{s['reached_iteration']} | {status} |")
    return "\n".join(lines)


def _environment(last):
    if last is None:
        return ""
    versions = ", ".join(f"{name} {version}" for name, version in last["versions"].items())
    return "\n".join([
        "## Software and hardware (last session)",
        "",
        f"- packages: {versions}",
        f"- device: {last['device']}; precision: {last.get('precision', 'fp32')}; torch CPU threads: "
        f"{last['threads']}; processes: {last['processes']}",
        *_numerics_lines(last.get("numerics")),
    ])


def _numerics_lines(n):
    """The device's name and the settings that decide its float results (sessions before they were recorded: none)."""
    if not n:
        return []
    return [f"- device name: {n['device_name']}; TF32 matmul: {'on' if n['tf32_matmul'] else 'off'}, TF32 cuDNN "
            f"convolutions: {'on' if n['tf32_cudnn'] else 'off'} (these matter on an Ampere or newer GPU only)",
            f"- deterministic algorithms: {'on' if n['deterministic'] else 'off'} (cuDNN deterministic "
            f"{'on' if n['cudnn_deterministic'] else 'off'}, benchmark {'on' if n['cudnn_benchmark'] else 'off'}, "
            f"CUBLAS_WORKSPACE_CONFIG {n['cublas_workspace'] or 'unset'})"]


def _data_section(config, data, sessions):
    named = f"`{config['data']}`" if config.get("data") else "the embedded Omniglot file (no --data)"
    lines = ["## Data", "", f"- file: {named} ({data['path']}, {data['bytes']:,} bytes)",
             f"- sha256: `{data['sha256']}`"]
    hashes = {s["data"]["sha256"] for s in sessions}
    if len(hashes) > 1:
        lines.append(f"- warning: the sessions of this run read {len(hashes)} different versions of the file")
    return "\n".join(lines)


def _metrics_section(rows):
    if not rows:
        return "## Metrics\n\nNo iteration was logged yet."
    final = rows[-1]
    scored = [r for r in rows if r.get("val_acc") is not None]
    best = max(scored, key=lambda r: r["val_acc"]) if scored else None
    named = [("final", final)] + ([("best val_acc", best)] if best is not None else [])
    fields = []
    for _, row in named:
        # numbers only: the genotype column is text, and the card shows the cell in its own section
        fields.extend(k for k, v in row.items() if isinstance(v, (int, float)) and k not in fields and k != "seconds")
    lines = ["## Metrics", "", "| | " + " | ".join(fields) + " |", "|---" * (len(fields) + 1) + "|"]
    for name, row in named:
        cells = ["" if row.get(k) is None else (str(int(row[k])) if k == "iteration" else f"{row[k]:.4g}")
                 for k in fields]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    seconds = sum(r.get("seconds") or 0.0 for r in rows)
    lines += ["", f"Training steps took {seconds:.0f} s in all (validation excluded); final = the last row of "
                  f"metrics.csv (written with each checkpoint)."]
    return "\n".join(lines)


def _fit_cell(run, state, genotype):
    if genotype is None:
        return "## Derived cell\n\nNo checkpoint yet, so no cell."
    table = format_edges_table(chosen_edges_table(*_alpha_probs(state), genotype))
    return "\n".join([
        "## Derived cell",
        "",
        f"From the meta-level edge posterior softmax(alpha) of the last checkpoint (iteration {state['iteration']}),"
        f" by the rule of `bayesnas derive-cell`: per node, the 2 strongest incoming edges, each with its best op.",
        "",
        f"![derived cell]({CELL_PICTURE})",
        "",
        "```",
        table,
        "```",
    ])


def _alpha_probs(state):
    """The meta-level edge probabilities softmax(alpha) of a fit checkpoint: ``[14, 10]`` per cell type."""
    meta = state.get("stateful", {}).get("meta")
    alphas = [meta.get(k) if isinstance(meta, dict) else None for k in ("alpha_normal", "alpha_reduce")]
    if not all(isinstance(a, torch.Tensor) and a.shape == (NUM_EDGES, NUM_OPS) for a in alphas):
        raise RunError(f"checkpoint_last.pt: holds no fit meta-network (alpha_normal and alpha_reduce "
                       f"[{NUM_EDGES}, {NUM_OPS}]); it was written by another command")
    return [a.float().softmax(-1) for a in alphas]


def _retrain_section(config, genotype, evaluation):
    lines = ["## Architecture", ""]
    if genotype is None:
        lines.append(f"`{arch_label(config['arch'])}`, {config['channels']} channels.")
    else:
        lines += [f"A genotype network: {config['layers']} cells, first cell {config['channels']} channels.", "",
                  "```"]
        for cell in CELL_TYPES:
            lines.append(f"{cell} cell:")
            lines += [f"  {line}" for line in node_lines(getattr(genotype, cell))]
        lines.append("```")
    lines += ["", "## Evaluation", ""]
    if evaluation is None:
        lines.append(f"None yet in {EVALUATION} (the evaluate command below writes it).")
    else:
        lines.append(f"{100 * evaluation['accuracy']:.2f}% ± {100 * evaluation['ci95']:.2f}% (95% CI) over "
                     f"{evaluation['tasks']} {evaluation['ways']}-way {evaluation['shots']}-shot tasks of the "
                     f"{evaluation['split']} split (seed {evaluation['seed']}, {evaluation['inner_steps']} inner "
                     f"steps, {evaluation['checkpoint']} checkpoint).")
    return "\n".join(lines)


def _commands(path, kind, config, iteration):
    run = os.path.normpath(path)
    q = shlex.quote
    tensorboard = os.path.isdir(os.path.join(run, "tensorboard"))
    finished = iteration >= config["iterations"]
    resume = (f" --resume {q(run)}" + (f" --iterations {2 * config['iterations']}" if finished else "")
              + (" --tensorboard" if tensorboard else ""))
    lines = ["## Commands", "", "```bash",
             "# resume from the last checkpoint" + (" (a finished run goes on only with more --iterations)"
                                                   if finished else "")]
    if kind == "fit":
        retrain_dir = run + "-retrain"
        data = f" --data {q(config['data'])}" if config.get("data") else ""
        lines += [
            f"bayesnas fit{resume}",
            "# derive the cell (genotype.json and its picture genotype.png), retrain it with MAML, evaluate it",
            f"bayesnas derive-cell {q(run)}",
            f"bayesnas retrain {q(run)} --out {q(retrain_dir)}{data}",
            f"bayesnas evaluate {q(retrain_dir)} --json {q(os.path.join(retrain_dir, EVALUATION))}",
        ]
    else:
        lines += [
            f"bayesnas retrain{resume}",
            "# evaluate on held-out classes; the card shows the result after: bayesnas inspect " + q(run),
            f"bayesnas evaluate {q(run)} --json {q(os.path.join(run, EVALUATION))}",
        ]
    if tensorboard:
        lines += ["# watch the curves and the posterior pictures",
                  f"tensorboard --logdir {q(os.path.join(run, 'tensorboard'))}"]
    lines.append("```")
    if not os.path.isabs(run):
        lines += ["", "Paths are relative to the folder the run was started in (see above)."]
    return "\n".join(lines)
