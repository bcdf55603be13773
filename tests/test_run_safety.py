"""Opening a run folder never runs code: a crafted checkpoint is refused by every command and API."""
import os
import pickle
import shutil

import pytest
import torch
from click.testing import CliRunner

import bayesnas
from bayesnas.analysis.derive import derive_cell
from bayesnas.cli.main import main
from bayesnas.errors import RunError
from bayesnas.training import RunDirectory
from bayesnas.training.retrain import load_retrain, retrain
from bayesnas.training.search import fit, load_fit

FIT = ["--iterations", "2", "--channels", "2", "--cells", "2", "--queries", "1", "--inner-steps", "1",
       "--val-every", "1", "--val-tasks", "2", "--threads", "1", "--quiet"]
RETRAIN = ["--iterations", "2", "--channels", "2", "--layers", "1", "--queries", "1", "--inner-steps", "1",
           "--val-every", "1", "--val-tasks", "2", "--threads", "1", "--quiet"]


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


class Exploit:
    """Pickles to a call of os.system: loading it with the unsafe loader creates ``marker``."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, small_omniglot):
    root = tmp_path_factory.mktemp("runs")
    fit_dir, retrain_dir = root / "fit", root / "retrain"
    result = invoke("fit", "--data", small_omniglot, "--out", fit_dir, *FIT)
    assert result.exit_code == 0, result.output
    result = invoke("retrain", "darts_v2", "--data", small_omniglot, "--out", retrain_dir, *RETRAIN)
    assert result.exit_code == 0, result.output
    return {"fit": fit_dir, "retrain": retrain_dir}


def hostile_copy(runs, kind, which, tmp_path, torch_format):
    """A copy of a real run folder whose checkpoint ``which`` runs ``touch MARKER`` when unpickled."""
    folder = tmp_path / f"{kind}-{which}"
    shutil.copytree(runs[kind], folder)
    marker = tmp_path / "pwned"
    path = folder / f"checkpoint_{which}.pt"
    if torch_format:  # inside torch's zip container, next to real tensors
        torch.save({"format": 2, "iteration": 1, "payload": Exploit(marker)}, path)
    else:  # a bare pickle, torch's legacy format
        with open(path, "wb") as f:
            pickle.dump(Exploit(marker), f, protocol=2)
    return folder, marker


def test_the_exploit_is_real(tmp_path):
    """The hostile file does run code with the unsafe loader: the tests below would notice."""
    marker = tmp_path / "pwned"
    torch.save({"payload": Exploit(marker)}, tmp_path / "x.pt")
    torch.load(tmp_path / "x.pt", weights_only=False)
    assert marker.exists()


# (kind of run folder, checkpoint replaced, how it is opened)
OPENERS = [
    ("fit", "last", "cli fit --resume", lambda d: invoke("fit", "--resume", d, "--quiet")),
    ("fit", "last", "cli derive-cell", lambda d: invoke("derive-cell", d, "--no-plot")),
    ("fit", "best", "cli derive-cell --checkpoint best", lambda d: invoke("derive-cell", d, "--checkpoint", "best")),
    ("fit", "last", "cli inspect", lambda d: invoke("inspect", d, "--no-plots")),
    ("fit", "best", "cli inspect --checkpoint best", lambda d: invoke("inspect", d, "--checkpoint", "best",
                                                                      "--no-plots")),
    ("retrain", "best", "cli evaluate", lambda d: invoke("evaluate", d, "--tasks", "2", "--quiet")),
    ("retrain", "last", "cli evaluate --checkpoint last", lambda d: invoke("evaluate", d, "--checkpoint", "last",
                                                                           "--tasks", "2", "--quiet")),
    ("retrain", "last", "cli retrain --resume", lambda d: invoke("retrain", "--resume", d, "--quiet")),
    ("fit", "last", "api load_run", lambda d: bayesnas.load_run(d)),
    ("fit", "best", "api Run best", lambda d: bayesnas.load_run(d).edge_posterior(which="best")),
    ("fit", "last", "api fit(resume=)", lambda d: fit(resume=d, progress=False)),
    ("fit", "last", "api load_fit", lambda d: load_fit(d)),
    ("fit", "best", "api derive_cell best", lambda d: derive_cell(d, which="best", plot=False)),
    ("retrain", "best", "api load_retrain", lambda d: load_retrain(d)),
    ("retrain", "last", "api retrain(resume=)", lambda d: retrain(resume=d, progress=False)),
]


@pytest.mark.parametrize("torch_format", [True, False], ids=["torch-zip", "bare-pickle"])
@pytest.mark.parametrize("kind,which,name,opener", OPENERS, ids=[o[2] for o in OPENERS])
def test_a_hostile_checkpoint_is_refused_and_runs_nothing(runs, tmp_path, kind, which, name, opener,
                                                           torch_format):
    folder, marker = hostile_copy(runs, kind, which, tmp_path, torch_format)
    if name.startswith("cli"):
        result = opener(folder)
        assert result.exit_code == 1, result.output
        assert "Traceback" not in result.output
        last = [line for line in result.output.splitlines() if line.strip()][-1]
        assert last.startswith("Error:") and f"checkpoint_{which}.pt: refused" in last, result.output
    else:
        with pytest.raises(RunError, match=f"checkpoint_{which}.pt: refused: it holds Python objects"):
            opener(folder)
    assert not marker.exists()


def test_compare_refuses_a_hostile_checkpoint_left_in_its_folder(runs, tmp_path, small_omniglot):
    out = tmp_path / "cmp"
    out.mkdir()
    # compare continues an earlier row it finds under OUT/<label>-seed<seed>
    folder, marker = hostile_copy(runs, "retrain", "last", tmp_path, torch_format=True)
    shutil.copytree(folder, out / "darts_v2-seed0")
    result = invoke("compare", "--baselines", "darts_v2", "--random-cells", "0", "--eval-tasks", "2", "--out", out,
                    "--data", small_omniglot, *RETRAIN)
    assert result.exit_code == 1, result.output
    assert "checkpoint_last.pt: refused" in result.output.splitlines()[-1]
    assert not marker.exists()


def test_checkpoints_written_by_bayesnas_load_with_weights_only(runs):
    for kind in ("fit", "retrain"):
        for which in ("last", "best"):
            state = torch.load(runs[kind] / f"checkpoint_{which}.pt", weights_only=True)
            assert state["format"] == 2 and state["iteration"] >= 1


def test_saving_anything_but_plain_data_is_a_bug_caught_at_write(tmp_path):
    import numpy as np

    run = RunDirectory.create(tmp_path / "r", {"x": 1})
    with pytest.raises(TypeError, match=r"state\['extra'\]\['a'\]\[1\] is a ndarray"):
        run.save_checkpoint({"extra": {"a": [1.0, np.zeros(2)]}})
    with pytest.raises(TypeError, match="is a float64"):  # a numpy float passes isinstance(x, float)
        run.save_checkpoint({"best": np.float64(0.5)})
    assert not os.path.exists(run.file("checkpoint_last.pt"))
