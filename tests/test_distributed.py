"""Several processes with torch.distributed (gloo on loopback, launched by torchrun)."""
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

from bayesnas.training import RunDirectory

ARGS = ["--iterations", "3", "--tasks", "2", "--channels", "2", "--queries", "2", "--inner-steps", "1",
        "--val-every", "3", "--val-tasks", "2", "--threads", "1", "--device", "cpu", "--quiet"]


def torchrun(nproc, *args, **kwargs):
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
               "-m", "bayesnas", *args]
    env = dict(os.environ, OMP_NUM_THREADS="1", BAYESNAS_DIST_TIMEOUT="60")
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kwargs)


def final_state(path):
    return RunDirectory(path).load_checkpoint()["stateful"]["meta"]


@pytest.mark.slow
def test_two_ranks_with_half_the_tasks_each_equal_one_rank_with_all(tmp_path, small_omniglot):
    # batch_tasks false: one call and one backward per task on both sides, the tasks'
    # gradients summed in task order. In one process the split is bitwise equal (the next
    # test); across processes the all-reduce and the averaged metrics are not shown to be,
    # so the parameters are compared to rtol 1e-4. With batching (or one backward over both
    # tasks) the rounding differs and Adam's normalised steps amplify it
    # (test_models_supernet checks batching exactly in float64)
    config = tmp_path / "config.json"
    config.write_text('{"batch_tasks": false}')
    data = ["--data", small_omniglot, "--config", str(config)]
    one = torchrun(1, "fit", *ARGS, *data, "--out", str(tmp_path / "one"))
    out_one = one.communicate(timeout=300)[0]
    assert one.returncode == 0, out_one
    two = torchrun(2, "fit", *ARGS, *data, "--out", str(tmp_path / "two"))
    out_two = two.communicate(timeout=300)[0]
    assert two.returncode == 0, out_two
    a, b = final_state(tmp_path / "one"), final_state(tmp_path / "two")
    for key in ("mu", "rho", "alpha_normal", "alpha_reduce"):
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-5)
    # the parameters did move: the comparison is not between two untouched initialisations
    assert not torch.allclose(a["alpha_normal"], torch.zeros_like(a["alpha_normal"]), atol=1e-3)
    rows_a = RunDirectory(tmp_path / "one").read_metrics()
    rows_b = RunDirectory(tmp_path / "two").read_metrics()
    for ra, rb in zip(rows_a, rows_b, strict=True):
        assert ra["loss"] == pytest.approx(rb["loss"], rel=1e-4)
    # only rank 0 wrote: one progress summary, one run folder
    assert out_two.count("run folder:") == 1


@pytest.mark.slow
def test_split_meta_batch_gives_bitwise_equal_gradients_in_one_process(small_omniglot):
    """What the 2-rank test relies on, without processes: with batch_tasks false, the
    meta-gradient of 2 tasks equals the average of the two 1-task shares' gradients exactly."""
    from bayesnas.config import FitConfig
    from bayesnas.data import open_data
    from bayesnas.inference.model import task_share
    from bayesnas.training.loop import task_samplers
    from bayesnas.training.search import build_meta_network, svi_step

    cfg = FitConfig(data=small_omniglot, tasks=2, channels=2, queries=2, inner_steps=1,
                    batch_tasks=False, grad_clip=0, first_order=False, arch_warmup=0)
    sampler, _ = task_samplers(cfg, open_data(small_omniglot), torch.device("cpu"))

    class Hold:  # keeps the gradients: no optimiser step
        def __init__(self, meta):  # svi_step sets alpha's step size in the group that holds alpha
            self.param_groups = [{"params": [meta.alpha_normal, meta.alpha_reduce]}]

        def zero_grad(self, set_to_none=True):
            pass

        def step(self):
            pass

    def grads(share, tasks):
        torch.manual_seed(0)
        meta = build_meta_network(cfg, 1)
        torch.manual_seed(5)
        with task_share(2, *share):
            svi_step(meta, Hold(meta), sampler.batch(tasks), cfg, 1)
        return torch.cat([p.grad.reshape(-1) for p in meta.meta_parameters()])

    whole = grads((0, 2), [0, 1])
    halves = (grads((0, 1), [0]) + grads((1, 2), [1])) / 2
    assert torch.equal(whole, halves)
    assert whole.abs().max() > 0


@pytest.mark.slow
def test_killing_one_rank_stops_the_job_and_the_last_checkpoint_loads(tmp_path, small_omniglot):
    out = tmp_path / "run"
    args = ["fit", "--iterations", "400", "--tasks", "2", "--channels", "2", "--queries", "2", "--inner-steps", "1",
            "--val-every", "400", "--checkpoint-every", "1", "--threads", "1", "--device", "cpu", "--quiet",
            "--data", small_omniglot, "--out", str(out)]
    job = torchrun(2, *args)
    checkpoint = out / "checkpoint_last.pt"
    deadline = time.time() + 240

    def trained():  # past the iteration-0 checkpoint a new run writes before its first step
        return checkpoint.exists() and RunDirectory(out).load_checkpoint()["iteration"] >= 1

    while not trained() and time.time() < deadline and job.poll() is None:
        time.sleep(0.5)
    assert trained(), job.communicate(timeout=60)[0]
    workers = subprocess.run(["pgrep", "-P", str(job.pid)], capture_output=True, text=True).stdout.split()
    rank1 = [pid for pid in workers
             if b"RANK=1\0" in open(f"/proc/{pid}/environ", "rb").read().replace(b"LOCAL_RANK=1\0", b"")]
    assert len(rank1) == 1, workers
    killed_at = time.time()
    os.kill(int(rank1[0]), signal.SIGKILL)
    output = job.communicate(timeout=120)[0]
    assert job.returncode != 0
    assert time.time() - killed_at < 90
    assert "bayesnas" in output
    state = RunDirectory(out).load_checkpoint()
    assert state["iteration"] >= 1


@pytest.mark.slow
def test_retrain_and_evaluate_split_across_two_ranks_match_one(tmp_path):
    # Conv-4 needs 16 pixels or more: the embedded 28x28 data
    args = ["--iterations", "3", "--tasks", "2", "--channels", "4", "--queries", "2", "--inner-steps", "1",
            "--val-every", "3", "--val-tasks", "3", "--threads", "1", "--device", "cpu", "--quiet"]
    outputs = {}
    for n in (1, 2):
        job = torchrun(n, "retrain", "conv4", *args, "--out", str(tmp_path / f"r{n}"))
        outputs[n] = job.communicate(timeout=300)[0]
        assert job.returncode == 0, outputs[n]
    a = RunDirectory(tmp_path / "r1").load_checkpoint()["stateful"]["net"]
    b = RunDirectory(tmp_path / "r2").load_checkpoint()["stateful"]["net"]
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-6)
    assert RunDirectory(tmp_path / "r1").read_metrics()[-1]["val_acc"] == pytest.approx(
        RunDirectory(tmp_path / "r2").read_metrics()[-1]["val_acc"], abs=1e-6)
    assert outputs[2].count("run folder:") == 1
    import json

    results = {}
    for n in (1, 2):
        job = torchrun(n, "evaluate", str(tmp_path / "r1"), "--tasks", "5", "--threads", "1", "--quiet",
                       "--json", str(tmp_path / f"eval{n}.json"))
        out = job.communicate(timeout=300)[0]
        assert job.returncode == 0, out
        results[n] = json.load(open(tmp_path / f"eval{n}.json"))
    assert results[1]["accuracies"] == pytest.approx(results[2]["accuracies"], abs=1e-6)
    assert results[1]["accuracy"] == pytest.approx(results[2]["accuracy"], abs=1e-9)


def kill_rank_1_after_a_checkpoint(job, out, iterations):
    """SIGKILL rank 1 of ``job`` once ``out`` holds a checkpoint past iteration 0 and before ``iterations``."""
    checkpoint = out / "checkpoint_last.pt"
    deadline = time.time() + 240
    reached = 0
    while reached < 1 and time.time() < deadline and job.poll() is None:
        if checkpoint.exists():
            try:
                reached = RunDirectory(out).load_checkpoint()["iteration"]
            except Exception:  # replaced while being read
                pass
        time.sleep(0.05)
    workers = subprocess.run(["pgrep", "-P", str(job.pid)], capture_output=True, text=True).stdout.split()
    rank1 = [pid for pid in workers
             if b"RANK=1\0" in open(f"/proc/{pid}/environ", "rb").read().replace(b"LOCAL_RANK=1\0", b"")]
    assert len(rank1) == 1, (workers, job.communicate(timeout=60)[0])
    os.kill(int(rank1[0]), signal.SIGKILL)
    output = job.communicate(timeout=120)[0]
    assert job.returncode != 0, output
    reached = RunDirectory(out).load_checkpoint()["iteration"]
    assert 1 <= reached < iterations, reached  # killed in the middle: the resumed runs have steps left to take
    return reached


@pytest.mark.slow
def test_a_killed_two_process_run_resumes_with_two_and_with_one_process(tmp_path, small_omniglot):
    """Each rank's checkpoint holds its own random streams. Resumed with 2 processes, each
    rank restores its own; resumed with 1, rank 0's (every rank's are equal: task_share makes
    all ranks draw the noise of the whole meta-batch), and the one line says so. With
    batch_tasks false (one backward per task, as the 1-versus-2-process test) both end with
    the uninterrupted 2-process run's parameters bitwise (measured on this CPU: the
    all-reduce's sum of two halves divided by 2 rounds as one process's sum of the two
    tasks' shares). The logged losses and accuracies of the 2-process resume are equal too;
    one process logs float32 sums where two log the float64 mean of their halves: loss to
    1e-6 relative, validation accuracy to 1e-7 (measured: one float32 rounding, 7e-9)."""
    config = tmp_path / "config.json"
    config.write_text('{"batch_tasks": false}')
    iterations = 8
    args = ["fit", *ARGS, "--data", small_omniglot, "--config", str(config), "--checkpoint-every", "1"]
    args[args.index("--iterations") + 1] = str(iterations)
    full = torchrun(2, *args, "--out", str(tmp_path / "full"))
    out_full = full.communicate(timeout=300)[0]
    assert full.returncode == 0, out_full
    killed = tmp_path / "killed"
    kill_rank_1_after_a_checkpoint(torchrun(2, *args, "--out", str(killed)), killed, iterations)
    state = RunDirectory(killed).load_checkpoint()
    assert len(state["rng"]) == 2 and all(s["device"] == "cpu" for s in state["rng"])
    shutil.copytree(killed, tmp_path / "killed1")
    expected = final_state(tmp_path / "full")
    rows_full = RunDirectory(tmp_path / "full").read_metrics()
    for n, path in ((2, killed), (1, tmp_path / "killed1")):
        job = torchrun(n, "fit", "--resume", str(path), "--quiet")
        output = job.communicate(timeout=300)[0]
        assert job.returncode == 0, output
        notes = [line for line in output.splitlines() if line.startswith("note:")]
        rows = RunDirectory(path).read_metrics()
        got = final_state(path)
        assert [r["iteration"] for r in rows] == list(range(1, iterations + 1))
        if n == 2:
            assert notes == [], output
        else:
            assert notes == ["note: resumed with 1 process from a checkpoint of 2 processes: each process restores "
                             "rank 0's random streams; the 2 saved ones are equal, so the run continues as it would "
                             "have"], output
        for key in expected:
            assert torch.equal(got[key], expected[key]), (n, key)
        if n == 2:
            assert [r["loss"] for r in rows] == [r["loss"] for r in rows_full]
            assert [r["val_acc"] for r in rows] == [r["val_acc"] for r in rows_full]
        else:
            assert [r["loss"] for r in rows] == pytest.approx([r["loss"] for r in rows_full], rel=1e-6)
            assert [r["val_acc"] for r in rows] == pytest.approx([r["val_acc"] for r in rows_full], abs=1e-7)
