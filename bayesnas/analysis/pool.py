"""A pool of retrained random cells: the yardstick a searched cell is judged against.

Random cells drawn from the search space, each retrained and evaluated under one compare
protocol (the same :class:`~bayesnas.config.RetrainConfig` apart from width and seed,
parameters matched to one target, the plateau rule, the same seeded test tasks), stored
with their per-task accuracies. A new cell retrained and evaluated under the same protocol
is then placed in the pool without retraining the pool (``compare(..., pool=FILE)``,
``bayesnas compare --pool FILE``): its percentile among the pool cells, and its paired
per-task difference from the pool's per-task median.

A pool file is JSON: ``{"format": 1, "protocol": {...}, "rows": [row, ...]}``, each row a
compare row (label, arch, accuracy, ci95, accuracies, parameters, channels, iterations,
val_acc, val_curves, val_rise, ...). :func:`pool_from_results` builds one from compare
results (``compare.json`` or the benchmark's report), :func:`load_pool` reads and checks one.

Usage::

    pool = pool_from_results([json.load(open("runs/compare/compare.json"))])
    save_pool(pool, "pool.json")
    standing(accuracies_of_my_cell, load_pool("pool.json"))
"""
import dataclasses
import math
from typing import List, NamedTuple

import numpy as np

from ..config import RetrainConfig
from ..errors import ConfigError
from ..fileio import read_json, write_json
from .evaluate import mean_confidence_interval

POOL_FORMAT = 1
#: what two comparisons must share for their rows to be compared (the rest of each row may differ)
PROTOCOL_KEYS = ("config", "eval_tasks", "eval_seed", "eval_inner_steps", "seeds", "param_target",
                 "param_tolerance", "max_iterations", "extend_by")
#: config fields that differ between the rows of one protocol, or do not change results
_FREE_CONFIG = ("arch", "seed", "channels", "device", "threads")


def protocol_of(result):
    """The protocol of a compare result (its JSON form, ``CompareResult.to_dict()``): the keys of
    :data:`PROTOCOL_KEYS`, the config without the fields that vary per row or only set speed."""
    missing = [k for k in PROTOCOL_KEYS if k not in result]
    if missing:
        raise ConfigError(f"compare result lacks {', '.join(missing)}: not a compare.json")
    out = {k: result[k] for k in PROTOCOL_KEYS}
    out["config"] = {k: v for k, v in result["config"].items() if k not in _FREE_CONFIG}
    return out


def protocol_differences(a, b):
    """The protocol keys (and config fields) on which protocols ``a`` and ``b`` differ, as text.

    A config field one side lacks was added to :class:`~bayesnas.config.RetrainConfig` after
    that side was made, and counts as its default.
    """
    defaults = {f.name: f.default for f in dataclasses.fields(RetrainConfig)}
    out = []
    for key in PROTOCOL_KEYS:
        if key == "config":
            for name in sorted(set(a["config"]) | set(b["config"])):
                mine, theirs = (c.get(name, defaults.get(name)) for c in (a["config"], b["config"]))
                if mine != theirs:
                    out.append(f"config.{name} {mine!r} vs {theirs!r}")
        elif a.get(key) != b.get(key):
            out.append(f"{key} {a.get(key)!r} vs {b.get(key)!r}")
    return out


def _is_random(row):
    return row.get("kind") == "random" or (row.get("kind") is None and str(row["label"]).startswith("random-"))


def pool_from_results(results):
    """A pool (dict) of the random-cell rows of compare results that share one protocol.

    Args:
        results: compare results in JSON form (``compare.json``); rows of the same label must
            hold the same cell (they are kept once).

    Raises:
        ConfigError when the protocols differ (naming the differences) or a label names two cells.
    """
    results = list(results)
    if not results:
        raise ConfigError("pool_from_results needs at least one compare result")
    protocol = protocol_of(results[0])
    rows = {}
    for result in results[1:]:
        diff = protocol_differences(protocol, protocol_of(result))
        if diff:
            raise ConfigError(f"compare results with different protocols cannot share a pool: {'; '.join(diff)}")
    for result in results:
        for row in result["rows"]:
            if not _is_random(row):
                continue
            if row["label"] in rows and rows[row["label"]]["arch"] != row["arch"]:
                raise ConfigError(f"{row['label']}: two different cells carry this label")
            rows[row["label"]] = {**row, "kind": "random"}
    if not rows:
        raise ConfigError("the compare results hold no random cells")
    return {"format": POOL_FORMAT, "protocol": protocol, "rows": list(rows.values())}


def save_pool(pool, path):
    """Write a pool atomically as JSON."""
    write_json(path, pool)


def check_pool(pool, source="pool"):
    """``pool`` checked: format, protocol, and every row with ``eval_tasks`` finite accuracies in [0, 1]."""
    if not isinstance(pool, dict) or pool.get("format") != POOL_FORMAT:
        raise ConfigError(f"{source}: not a pool file (expected a JSON object with \"format\": {POOL_FORMAT})")
    protocol, rows = pool.get("protocol"), pool.get("rows")
    if not isinstance(protocol, dict) or any(k not in protocol for k in PROTOCOL_KEYS):
        raise ConfigError(f"{source}: protocol missing or incomplete (needs {', '.join(PROTOCOL_KEYS)})")
    if not isinstance(rows, list) or not rows:
        raise ConfigError(f"{source}: expected a non-empty list of rows")
    tasks = protocol["eval_tasks"]
    for i, row in enumerate(rows):
        if not isinstance(row, dict) or not isinstance(row.get("label"), str) or "arch" not in row:
            raise ConfigError(f"{source}: rows[{i}] is not a compare row (label, arch, accuracies)")
        accs = row.get("accuracies")
        ok = isinstance(accs, list) and len(accs) == tasks and all(
            isinstance(a, (int, float)) and not isinstance(a, bool) and math.isfinite(a) and 0 <= a <= 1 for a in accs)
        if not ok:
            raise ConfigError(f"{source}: rows[{i}] ({row['label']}): expected {tasks} per-task accuracies in [0, 1]")
    return pool


def load_pool(path):
    """Read and check a pool file (:func:`check_pool`)."""
    return check_pool(read_json(path, error=ConfigError, what="pool file"), source=str(path))


class Standing(NamedTuple):
    """Where a cell stands in a pool.

    label; accuracy: its mean test accuracy; percentile: the share of pool cells whose mean
    accuracy is below it (ties count half), in [0, 1]; pool_median: the median of the pool
    cells' mean accuracies; difference, difference_ci95: mean and 95% CI over tasks of its
    per-task accuracy minus the pool's per-task median; pool_size: cells in the pool.
    """

    label: str
    accuracy: float
    percentile: float
    pool_median: float
    difference: float
    difference_ci95: float
    pool_size: int


def standing(label, accuracies, pool):
    """The :class:`Standing` of a cell with per-task ``accuracies`` ``[n]`` (seed-averaged, the
    pool's test tasks in the same order) in ``pool``."""
    accs = np.asarray(accuracies, dtype=np.float64)
    table = np.asarray([r["accuracies"] for r in pool["rows"]], dtype=np.float64)  # [cells, tasks]
    if accs.shape != table.shape[1:]:
        raise ConfigError(f"{label}: {accs.size} task accuracies, the pool has {table.shape[1]}")
    means = table.mean(1)
    mean = float(accs.mean())
    percentile = float(((means < mean).sum() + 0.5 * (means == mean).sum()) / len(means))
    diff, ci = mean_confidence_interval(accs - np.median(table, axis=0))
    return Standing(label, mean, percentile, float(np.median(means)), diff, ci, len(means))


def format_standings(standings: List[Standing]):
    """Plain-text lines: each cell's percentile in the pool and its paired difference from the pool median."""
    if not standings:
        return ""
    lines = [f"against a pool of {standings[0].pool_size} random cells (median {100 * standings[0].pool_median:.2f}%):"]
    for s in standings:
        lines.append(f"  {s.label:<16} {100 * s.accuracy:.2f}%  percentile {100 * s.percentile:.0f}  "
                     f"vs per-task pool median {100 * s.difference:+.2f}% ± {100 * s.difference_ci95:.2f}%")
    return "\n".join(lines)
