"""The Python pieces of benchmarks/gpu_check.sh: synthetic 84x84 data, a fit killed and
resumed on one device (are the metrics identical?), a run resumed on another device.

    python benchmarks/gpu_check.py synthetic-data /tmp/mini84.h5
    python benchmarks/gpu_check.py kill-resume --device cuda --deterministic --data /tmp/mini84.h5 --work /tmp/kr \\
        --json benchmarks/results/gpu_check/resume_cuda.json
    python benchmarks/gpu_check.py resume-on --device cpu --run /tmp/kr/full --json gpu_to_cpu.json

Each prints its JSON too. They run on a CPU as well (tests/test_benchmarks_gpu_check.py runs them there).
"""
import argparse
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import torch

from bayesnas.fileio import write_json

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

#: the paper's search shape: C=16, 5 cells, N=4 inner steps, 5-way 5-shot (84x84 from the data)
PAPER = {"channels": 16, "cells": 5, "inner_steps": 4, "ways": 5, "shots": 5, "queries": 5, "tasks": 2}
#: three iterations, each checkpointed and validated at the end
SHORT = {"iterations": 3, "checkpoint_every": 1, "val_every": 3, "val_tasks": 2, "val_samples": 2, "log_every": 1}


def synthetic_data(path, side=84, classes=(16, 6, 6), images=12, seed=0):
    """A Mini-ImageNet-shaped HDF5 file of random RGB images: ``classes`` train/val/test classes of ``images`` each."""
    from bayesnas.data import ClassRecord, write_dataset

    rng = np.random.default_rng(seed)
    splits = {name: [ClassRecord(f"{name}{c:03d}", "", rng.integers(0, 256, (images, side, side, 3), dtype=np.uint8))
                     for c in range(count)] for name, count in zip(("train", "val", "test"), classes, strict=True)}
    write_dataset(path, splits, source=f"synthetic {side}x{side} RGB (gpu_check)", image_size=(side, side), channels=3)
    return path


_KILLED_RUN = """
import json, os, sys
from bayesnas.config import FitConfig
from bayesnas.training import fit
settings, out, at = json.loads(sys.argv[1]), sys.argv[2], int(sys.argv[3])
def die(iteration, row):  # as a SIGKILL there: no cleanup, the checkpoint of this iteration not yet written
    if iteration == at:
        os._exit(9)
fit(FitConfig(**settings), out=out, progress=False, callbacks=[die])
"""


def _fit_settings(args):
    settings = dict(PAPER if args.paper else {"channels": 2, "queries": 2, "inner_steps": 1}, **SHORT)
    settings.update(data=args.data, device=args.device, deterministic=args.deterministic, seed=args.seed)
    return settings


def kill_resume(args):
    """An uninterrupted fit, one killed after iteration ``--kill-at`` (before its checkpoint), and its resume."""
    from bayesnas.config import FitConfig
    from bayesnas.training import RunDirectory, fit

    settings = _fit_settings(args)
    full, killed = os.path.join(args.work, "full"), os.path.join(args.work, "killed")
    for path in (full, killed):
        shutil.rmtree(path, ignore_errors=True)
    fit(FitConfig(**settings), out=full, progress=False)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]))
    died = subprocess.run([sys.executable, "-c", _KILLED_RUN, json.dumps(settings), killed, str(args.kill_at)],
                          env=env, capture_output=True, text=True)
    checkpoint = RunDirectory(killed).load_checkpoint()["iteration"]
    done = subprocess.run([sys.executable, "-m", "bayesnas", "fit", "--resume", killed, "--quiet"], env=env,
                          capture_output=True, text=True)
    a, b = RunDirectory(full), RunDirectory(killed)
    rows_a, rows_b = a.read_metrics(), b.read_metrics()
    keys = ("loss", "loglik", "kl_theta", "kl_z", "acc", "val_acc", "val_elbo")
    pa, pb = a.load_checkpoint()["stateful"]["meta"], b.load_checkpoint()["stateful"]["meta"]
    result = {
        "device": args.device, "deterministic": args.deterministic, "settings": settings,
        "killed_exit_code": died.returncode, "checkpoint_when_killed": checkpoint,
        "resume_exit_code": done.returncode, "resume_stderr": done.stderr.strip().splitlines()[-5:],
        "metrics_identical": [{k: r.get(k) for k in keys} for r in rows_a] == [{k: r.get(k) for k in keys}
                                                                               for r in rows_b],
        "parameters_identical": all(torch.equal(pa[k], pb[k]) for k in pa),
        "max_abs_parameter_difference": max(float((pa[k].double() - pb[k].double()).abs().max()) for k in pa),
        "losses_full": [r["loss"] for r in rows_a], "losses_resumed": [r["loss"] for r in rows_b],
    }
    return result


def resume_on(args):
    """A copy of the run ``--run`` resumed for one more iteration with ``--device``: exit code and its notes."""
    from bayesnas.training import RunDirectory

    copy = os.path.join(os.path.dirname(os.path.abspath(args.run)), f"resumed-on-{args.device.replace(':', '')}")
    shutil.rmtree(copy, ignore_errors=True)
    shutil.copytree(args.run, copy)
    before = RunDirectory(copy).load_checkpoint()["iteration"]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]))
    done = subprocess.run([sys.executable, "-m", "bayesnas", "fit", "--resume", copy, "--device", args.device,
                           "--iterations", str(before + 1), "--quiet"], env=env, capture_output=True, text=True)
    sessions = json.load(open(RunDirectory(copy).file("sessions.json")))
    return {"run": args.run, "device": args.device, "exit_code": done.returncode,
            "notes": [line for line in done.stderr.splitlines() if line.startswith("note:")],
            "stderr_tail": done.stderr.strip().splitlines()[-3:],
            "devices_of_sessions": [s["device"] for s in sessions],
            "iteration": RunDirectory(copy).load_checkpoint()["iteration"]}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    data = sub.add_parser("synthetic-data", help="write a synthetic 84x84 RGB HDF5 file")
    data.add_argument("path")
    kr = sub.add_parser("kill-resume", help="fit, a fit killed mid-way, its resume: identical?")
    kr.add_argument("--device", default="cpu")
    kr.add_argument("--data", default=None)
    kr.add_argument("--work", required=True, help="folder for the runs")
    kr.add_argument("--deterministic", action="store_true")
    kr.add_argument("--paper", action="store_true", help="the paper's search shape (else a tiny supernet)")
    kr.add_argument("--kill-at", type=int, default=2)
    kr.add_argument("--seed", type=int, default=0)
    kr.add_argument("--json", default=None)
    ro = sub.add_parser("resume-on", help="resume a run on another device for one iteration")
    ro.add_argument("--run", required=True)
    ro.add_argument("--device", default="cpu")
    ro.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    if args.command == "synthetic-data":
        synthetic_data(args.path)
        print(args.path)
        return args.path
    result = kill_resume(args) if args.command == "kill-resume" else resume_on(args)
    print(json.dumps(result, indent=1))
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        write_json(args.json, result)  # atomic, as every JSON bayesnas writes
    return result


if __name__ == "__main__":
    main()
