"""Every file, folder and number a user can hand over: one clear line, bounded time and memory.

One section per mechanism of issue 27: image decoding, sizes and numbers, JSON limits,
output folders, run-folder files, reused evaluations, writes and locks in a run folder,
fixed networks' image shapes. Each case is an input the issue found ending in a
traceback, a hang, unbounded memory or a wrong number; each now ends in one line naming
the input and a non-zero exit, with nothing half-written. Cases that could hang or
allocate without end run under a time limit (:func:`within`) or in a subprocess with
an address-space limit.
"""
import contextlib
import io
import json
import os
import re
import shutil
import signal
import struct
import subprocess
import sys
import textwrap
import zlib

import h5py
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from bayesnas.cli.main import main
from bayesnas.config import MAX_SEED, FitConfig, RetrainConfig
from bayesnas.data import ClassRecord, import_folder, open_data, write_dataset
from bayesnas.data.imaging import MAX_IMAGE_SIZE, decode
from bayesnas.errors import ConfigError, DataError, GenotypeError, RunError
from bayesnas.fileio import JSON_MAX_DEPTH, read_json
from bayesnas.models import Conv4
from bayesnas.training import RunDirectory
from tests.data_fixtures import REPO, png_bytes

FIT = ["--iterations", "2", "--channels", "2", "--cells", "2", "--queries", "1", "--inner-steps", "1",
       "--val-every", "1", "--val-tasks", "2", "--threads", "1", "--quiet"]
RETRAIN = ["--iterations", "2", "--channels", "2", "--layers", "1", "--queries", "1", "--inner-steps", "1",
           "--val-every", "1", "--val-tasks", "2", "--threads", "1", "--quiet"]


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def one_line_error(result, *fragments, code=1):
    """The command failed with one ``Error:`` line holding every fragment, and no traceback."""
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, result.output
    for fragment in fragments:
        assert fragment in errors[0], result.output
    return errors[0]


@contextlib.contextmanager
def within(seconds):
    """Fail the test (TimeoutError) if the block runs longer than ``seconds``: a hang is a failure."""
    def expire(signum, frame):
        raise TimeoutError(f"still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def run_limited(code, memory_gib=3, timeout=120):
    """Run Python ``code`` in a subprocess limited to ``memory_gib`` of address space and ``timeout`` s."""
    limit = int(memory_gib * 2**30)
    prelude = (f"import resource; resource.setrlimit(resource.RLIMIT_AS, ({limit}, {limit}))\n")
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-c", prelude + textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=str(REPO))


@pytest.fixture(scope="module")
def runs(tmp_path_factory, small_omniglot):
    """A real fit run and a real retrain run (with an evaluation), copied by the tests that spoil them."""
    root = tmp_path_factory.mktemp("runs")
    fit_dir, retrain_dir = root / "fit", root / "retrain"
    assert invoke("fit", "--data", small_omniglot, "--out", fit_dir, *FIT).exit_code == 0
    assert invoke("retrain", "darts_v2", "--data", small_omniglot, "--out", retrain_dir, *RETRAIN).exit_code == 0
    assert invoke("evaluate", retrain_dir, "--tasks", "3", "--json", retrain_dir / "evaluation.json",
                  "--quiet").exit_code == 0
    return {"fit": fit_dir, "retrain": retrain_dir}


def copy_run(runs, kind, tmp_path):
    folder = tmp_path / kind
    shutil.copytree(runs[kind], folder)
    return folder


# 1. Image decoding: regular files only, PNG and JPEG only, every decoder error one line


def png_chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def hostile_images():
    """Files named .png whose bytes Pillow would decode as something else, or fail on with
    an exception that is not OSError or ValueError."""
    png = png_bytes(np.zeros((8, 8), np.uint8))
    end = png.index(b"IEND") - 4
    dds = io.BytesIO()
    Image.new("RGB", (4, 4)).save(dds, "DDS")
    tiff = io.BytesIO()
    Image.new("L", (4, 4)).save(tiff, "TIFF")
    return {
        "zTXt after IDAT (SyntaxError)": png[:end] + png_chunk(b"zTXt", b"key\x00\x01junk") + png[end:],
        "DDS texture": dds.getvalue(),
        "TIFF": tiff.getvalue(),
        "PostScript": b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n",
        "truncated PNG": png[:40],
        "empty": b"",
    }


@pytest.mark.parametrize("name", list(hostile_images()))
def test_a_hostile_image_is_one_data_error_naming_it(name):
    with pytest.raises(DataError, match=r"^where\.png: unreadable image \("):
        decode(hostile_images()[name], "L", "where.png")


def test_no_byte_flip_of_a_png_escapes_as_another_exception():
    png = png_bytes(np.random.default_rng(0).integers(0, 256, (12, 12), dtype=np.uint8))
    rng = np.random.default_rng(1)
    for _ in range(300):
        data = bytearray(png)
        for position in rng.integers(8, len(data), 3):
            data[position] = rng.integers(0, 256)
        try:
            decode(bytes(data), "L", "flipped.png")
        except DataError as exc:
            assert str(exc).startswith("flipped.png: ")


def class_folder(root, classes=6, images=3, side=6):
    rng = np.random.default_rng(0)
    for c in range(classes):
        folder = root / f"class{c}"
        folder.mkdir(parents=True)
        for i in range(images):
            (folder / f"img_{i}.png").write_bytes(png_bytes(rng.integers(0, 256, (side, side), dtype=np.uint8)))
    return root


def test_a_fifo_named_png_is_refused_without_blocking(tmp_path):
    root = class_folder(tmp_path / "imgs")
    os.mkfifo(root / "class3" / "9.png")
    with within(20):
        result = invoke("data", "import", "folder", root, "--out", tmp_path / "o.h5")
    one_line_error(result, str(root / "class3" / "9.png"), "not a regular file")
    assert not (tmp_path / "o.h5").exists()


def test_a_fifo_handed_over_as_a_zip_or_checkpoint_is_refused_without_blocking(runs, tmp_path):
    from bayesnas.data import import_omniglot

    os.mkfifo(tmp_path / "omniglot.zip")
    with within(20), pytest.raises(DataError, match="omniglot.zip: is not a regular file"):
        import_omniglot([tmp_path / "omniglot.zip"], tmp_path / "o.h5", progress=False)
    folder = copy_run(runs, "retrain", tmp_path)
    (folder / "checkpoint_last.pt").unlink()
    os.mkfifo(folder / "checkpoint_last.pt")
    with within(20), pytest.raises(RunError, match="checkpoint_last.pt: is not a regular file"):
        RunDirectory(folder).load_checkpoint()


def test_a_root_folder_name_that_is_not_utf8_is_imported(tmp_path):
    root = class_folder(tmp_path / os.fsdecode(b"caf\xe9"))
    data = import_folder(root, tmp_path / "o.h5", progress=False)
    assert data.source.startswith("folder (caf\ufffd);")


def test_a_name_that_is_not_utf8_is_refused_before_writing(tmp_path):
    images = np.zeros((2, 4, 4, 1), np.uint8)
    with pytest.raises(DataError, match="class name 'a\ufffdb' is not valid UTF-8"):
        write_dataset(tmp_path / "o.h5", {"train": [ClassRecord(os.fsdecode(b"a\xffb"), "", images)]}, "x",
                      (4, 4), 1)
    assert not (tmp_path / "o.h5").exists()


# 2. Sizes and numbers: bounded where they enter


def test_an_image_size_above_the_maximum_is_refused(tmp_path):
    root = class_folder(tmp_path / "imgs")
    for command in (["folder", root], ["omniglot", root], ["miniimagenet", root]):
        result = invoke("data", "import", *command, "--size", "100000", "--out", tmp_path / "o.h5")
        assert result.exit_code == 2 and f"1<=x<={MAX_IMAGE_SIZE}" in result.output, result.output
    with pytest.raises(ConfigError, match=f"size must be a positive integer of at most {MAX_IMAGE_SIZE}"):
        import_folder(root, tmp_path / "o.h5", size=100000)
    with pytest.raises(ConfigError, match=f"image_size=100000: expected an integer <= {MAX_IMAGE_SIZE}"):
        FitConfig(image_size=100000).validate()
    assert not (tmp_path / "o.h5").exists()


def test_a_data_file_declaring_more_images_than_memory_is_refused_before_loading(tmp_path):
    path = tmp_path / "huge.h5"
    side = 131072
    with h5py.File(path, "w") as f:
        f.attrs.update(format="bayesnas-fewshot", version=1, source="hostile", channels=1,
                       image_size=np.array([side, side]))
        for split in ("train", "val"):
            ds = f.create_group(split).create_dataset("00000", shape=(48, side, side, 1), dtype=np.uint8,
                                                      chunks=(1, 256, 256, 1), compression="gzip")
            ds.attrs.update(name="c", group="")
    assert path.stat().st_size < 100_000
    with within(30):
        with pytest.raises(DataError, match=r"huge.h5: split 'train': 48 images x 131072x131072x1 bytes = "
                                            r"768.0 GiB, more than the [\d,.]+ GiB of memory available"):
            open_data(path).split("train")
        result = invoke("fit", "--data", path, "--out", tmp_path / "run", *FIT)
    one_line_error(result, "768.0 GiB")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("args", [
    ["fit", "--seed", str(10**23)],
    ["retrain", "conv4", "--seed", str(10**23)],
    ["derive-cell", "RUN", "--task-seed", str(10**23)],
    ["evaluate", "RUN", "--seed", str(MAX_SEED + 1)],
    ["compare", "--seeds", f"0,{10**23}"],
])
def test_a_seed_beyond_what_torch_takes_is_refused(tmp_path, args):
    result = invoke(*[str(tmp_path / a) if a == "RUN" else a for a in args], "--out", tmp_path / "out")
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    assert not (tmp_path / "out").exists()


def test_seeds_are_bounded_in_the_library_too():
    with pytest.raises(ConfigError, match=f"seed={10**23}: expected an integer <= {MAX_SEED}"):
        FitConfig(seed=10**23).validate()
    with pytest.raises(ConfigError, match="seed=-1: expected an integer >= 0"):
        RetrainConfig(seed=-1).validate()
    torch.manual_seed(MAX_SEED + 12345)  # the largest seed leaves room for the streams derived from it


@pytest.mark.parametrize("flag", ["--meta-lr", "--inner-lr", "--tau-end", "--kl-weight"])
@pytest.mark.parametrize("value", ["inf", "-inf", "nan"])
def test_a_rate_that_is_not_finite_is_refused_before_a_run_folder_exists(tmp_path, small_omniglot, flag, value):
    command = "retrain" if flag == "--inner-lr" else "fit"
    args = [command, *(["darts_v2"] if command == "retrain" else []), "--data", small_omniglot,
            "--out", tmp_path / "run", *(RETRAIN if command == "retrain" else FIT), f"{flag}={value}"]
    result = invoke(*args)
    assert result.exit_code in (1, 2) and "Traceback" not in result.output, result.output
    if result.exit_code == 1:
        one_line_error(result, f"{flag[2:].replace('-', '_')}=", "expected a finite number")
    assert not (tmp_path / "run").exists()


# 3. JSON: one reader with limits on size, depth and integer digits


def test_the_json_reader_bounds_digits_depth_size_and_file_kind(tmp_path):
    cases = {
        "digits.json": ('{"seed": ' + "9" * 5000 + "}", "an integer of 5000 digits (at most 40)"),
        "deep.json": ("[" * 100_000 + "]" * 100_000, f"nested 100000 levels deep (at most {JSON_MAX_DEPTH})"),
        "latin1.json": (b'{"a": "caf\xe9"}', "not UTF-8 text"),
        "broken.json": ('{"a": ', "not valid JSON"),
    }
    for name, (text, message) in cases.items():
        path = tmp_path / name
        path.write_bytes(text if isinstance(text, bytes) else text.encode())
        with within(10):
            with pytest.raises(ConfigError, match=re.escape(message)):
                read_json(path, ConfigError, "config file")
    strings = tmp_path / "strings.json"
    strings.write_text(json.dumps({"text": "[" * 1000, "n": [[[1]]], "k": 2**63}))
    assert read_json(strings)["n"] == [[[1]]]  # brackets inside strings are not nesting
    with pytest.raises(ConfigError, match="strings.json: 1,052 bytes, more than the 10 a config file may have"):
        read_json(strings, ConfigError, "config file", max_bytes=10)
    os.mkfifo(tmp_path / "fifo.json")
    for path, message in ((tmp_path / "fifo.json", "not a regular file"), ("/dev/zero", "not a regular file"),
                          (tmp_path, "is a directory")):
        with within(10):
            with pytest.raises(ConfigError, match=message):
                read_json(path, ConfigError, "config file")


def test_hostile_json_handed_to_commands_is_one_line(tmp_path, small_omniglot):
    config = tmp_path / "cfg.json"
    config.write_text('{"iterations": ' + "1" * 5000 + "}")
    one_line_error(invoke("fit", "--config", config, "--data", small_omniglot, "--out", tmp_path / "run"),
                   str(config), "5000 digits")
    genotype = json.loads((REPO / "benchmarks/results/base_omniglot_seed0_genotype.json").read_text())
    digits = tmp_path / "digits.json"
    digits.write_text(json.dumps(genotype).replace('", 0]', '", ' + "1" * 5000 + "]", 1))
    deep = tmp_path / "deep.json"
    deep.write_text('{"normal": ' + "[" * 100_000 + "]" * 100_000 + "}")
    for path, message in ((digits, "5000 digits"), (deep, "100001 levels deep")):
        with within(20):
            one_line_error(invoke("retrain", path, "--data", small_omniglot, "--out", tmp_path / "run", *RETRAIN),
                           str(path), message)
        with pytest.raises(GenotypeError, match=message):
            RetrainConfig(arch=str(path)).validate()
    assert not (tmp_path / "run").exists()


# 4. Output folders: made in one place, every failure one line naming the path


def test_an_output_folder_that_cannot_be_made_is_one_line(tmp_path, small_omniglot):
    afile = tmp_path / "file"
    afile.write_text("x")
    long_name = tmp_path / ("c" * 300)
    one_line_error(invoke("fit", "--data", small_omniglot, "--out", "/proc/x", *FIT), "/proc/x: cannot create")
    one_line_error(invoke("retrain", "darts_v2", "--data", small_omniglot, "--out", afile / "run", *RETRAIN),
                   f"{afile / 'run'}: cannot create the folder (Not a directory)")
    one_line_error(invoke("compare", "--baselines", "darts_v2", "--random-cells", "0", "--data", small_omniglot,
                          "--out", long_name, *RETRAIN), "a name of 300 bytes (at most 255)")
    assert afile.read_text() == "x"


def test_a_tensorboard_path_that_is_a_file_is_refused_before_anything_is_written(tmp_path, small_omniglot, runs):
    out = tmp_path / "new"
    out.mkdir()
    (out / "tensorboard").write_text("x")
    one_line_error(invoke("fit", "--data", small_omniglot, "--out", out, "--tensorboard", *FIT),
                   f"{out / 'tensorboard'}: is not a folder")
    assert sorted(p.name for p in out.iterdir()) == ["tensorboard"]
    run = copy_run(runs, "retrain", tmp_path)
    (run / "tensorboard").write_text("x")
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    one_line_error(invoke("retrain", "--resume", run, "--iterations", "3", "--tensorboard", "--quiet"),
                   f"{run / 'tensorboard'}: is not a folder")
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before


# 5. Run-folder files: validated when read, named when wrong


def spoil(folder, name, content):
    path = folder / name
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()
    if content is None:
        path.mkdir()
    else:
        path.write_text(content if isinstance(content, str) else json.dumps(content))
    return path


def sessions_with(folder, **changes):
    sessions = json.loads((folder / "sessions.json").read_text())
    sessions[-1].update(changes)
    return sessions


SPOILED = {
    "a session status that is a number": ("fit", "sessions.json", lambda f: sessions_with(f, status=5),
                                          "record 1: status=5, expected a string"),
    "a session without its data": ("retrain", "sessions.json", lambda f: sessions_with(f, data=[]),
                                   "record 1: data=[], expected an object"),
    "sessions.json a folder": ("fit", "sessions.json", None, "is a directory"),
    "sessions.json nested 100,000 deep": ("fit", "sessions.json", "[" * 100_000 + "]" * 100_000,
                                          "100000 levels deep"),
    "an evaluation of []": ("retrain", "evaluation.json", [], "expected a JSON object of evaluation fields"),
    "an evaluation of 750%": ("retrain", "evaluation.json",
                              lambda f: dict(json.loads((f / "evaluation.json").read_text()), accuracy=7.5),
                              "accuracy=7.5, expected a number in [0, 1]"),
    "iterations: many": ("fit", "config.json",
                         lambda f: dict(json.loads((f / "config.json").read_text()), iterations="many"),
                         "iterations='many': expected an integer"),
    "config.json a folder": ("retrain", "config.json", None, "is a directory"),
    "a metrics cell that is no number": ("fit", "metrics.csv",
                                         lambda f: (f / "metrics.csv").read_text().replace("\n1,", "\nabc,", 1),
                                         "line 2: iteration='abc', expected a number"),
}


@pytest.mark.parametrize("case", list(SPOILED))
def test_inspect_names_the_spoiled_run_file(runs, tmp_path, case):
    kind, name, content, message = SPOILED[case]
    folder = copy_run(runs, kind, tmp_path)
    path = spoil(folder, name, content(folder) if callable(content) else content)
    with within(60):
        one_line_error(invoke("inspect", folder, "--no-plots"), str(path), message)


def test_a_posterior_history_of_the_wrong_shape_is_named(runs, tmp_path):
    folder = copy_run(runs, "fit", tmp_path)
    path = folder / "posterior_history.h5"
    with h5py.File(path, "r+") as f:
        del f["alpha_reduce"]
        f["alpha_reduce"] = np.zeros((1, 3), np.float32)
    one_line_error(invoke("inspect", folder, "--no-plots"), str(path),
                   "alpha_reduce is float32 [1, 3], expected floats [1, 14, 10]")


def test_evaluate_names_a_config_that_is_a_folder(runs, tmp_path):
    folder = copy_run(runs, "retrain", tmp_path)
    path = spoil(folder, "config.json", None)
    one_line_error(invoke("evaluate", folder, "--tasks", "2", "--quiet"), str(path), "is a directory")


def test_a_saved_config_naming_a_device_is_never_read(runs, tmp_path):
    retrain_run = copy_run(runs, "retrain", tmp_path)
    config = json.loads((retrain_run / "config.json").read_text())
    (retrain_run / "config.json").write_text(json.dumps(dict(config, arch="/dev/zero")))
    fit_run = copy_run(runs, "fit", tmp_path)
    config = json.loads((fit_run / "config.json").read_text())
    (fit_run / "config.json").write_text(json.dumps(dict(config, data="/dev/zero")))
    (fit_run / "sessions.json").unlink()  # the card then hashes the configured data file itself
    with within(60):
        one_line_error(invoke("evaluate", retrain_run, "--tasks", "2", "--quiet"),
                       "arch='/dev/zero': expected one of conv4, darts_v2 or a genotype object")
        one_line_error(invoke("inspect", fit_run, "--no-plots"), "/dev/zero: is not a regular file")


def test_evaluating_a_device_path_stays_bounded_in_memory(runs, tmp_path):
    folder = copy_run(runs, "retrain", tmp_path)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps(dict(config, arch="/dev/zero")))
    done = run_limited(f"""
        from bayesnas.analysis.evaluate import evaluate
        from bayesnas.errors import RunError
        try:
            evaluate({str(folder)!r}, tasks=2)
        except RunError as exc:
            print("refused:", exc)
        """)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "refused:" in done.stdout and "/dev/zero" in done.stdout


# 6. Reused evaluations: checked before they are trusted


@pytest.mark.parametrize("forged", [{"accuracies": "nan"}, {"accuracies": 7.5}, {"tasks": 2},
                                    {"accuracy": 0.123}])
def test_a_forged_evaluation_is_evaluated_again(runs, tmp_path, forged):
    from bayesnas.analysis.evaluate import evaluate, previous_evaluation

    folder = copy_run(runs, "retrain", tmp_path)
    path = folder / "evaluation.json"
    saved = json.loads(path.read_text())
    assert previous_evaluation(path, folder, tasks=3).accuracy == saved["accuracy"]  # the real one is reused
    if "accuracies" in forged:
        value = float(forged["accuracies"])
        saved.update(accuracies=[value] * saved["tasks"], accuracy=value)
    else:
        saved.update(forged)
    path.write_text(json.dumps(saved))
    assert previous_evaluation(path, folder, tasks=3) is None
    again = evaluate(folder, tasks=3)
    assert 0 <= again.accuracy <= 1 and len(again.accuracies) == 3


def test_compare_never_reports_a_forged_evaluation(tmp_path, small_omniglot):
    out = tmp_path / "cmp"
    args = ["compare", "--baselines", "darts_v2", "--random-cells", "0", "--no-match-params", "--eval-tasks", "2",
            "--data", small_omniglot, "--out", out, *RETRAIN]
    assert invoke(*args).exit_code == 0
    path = out / "darts_v2-seed0" / "evaluation.json"
    saved = json.loads(path.read_text())
    path.write_text(json.dumps(dict(saved, accuracies=[7.5, 7.5], accuracy=7.5)))
    result = invoke(*args)
    assert result.exit_code == 0, result.output
    row = json.loads((out / "compare.json").read_text())["rows"][0]
    assert row["accuracy"] == saved["accuracy"] and "750" not in result.output
    assert json.loads(path.read_text())["accuracy"] == saved["accuracy"]


# 7. Writes stay inside the run folder; a folder in use is refused


def test_a_symlink_planted_at_run_tensorboard_is_not_written_through(runs, tmp_path):
    folder = copy_run(runs, "retrain", tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (folder / "tensorboard").symlink_to(elsewhere)
    one_line_error(invoke("retrain", "--resume", folder, "--iterations", "3", "--tensorboard", "--quiet"),
                   f"{folder / 'tensorboard'}: is a symlink")
    assert list(elsewhere.iterdir()) == []
    with pytest.raises(RunError, match="is a symlink"):
        RunDirectory(folder).subfolder("tensorboard")


def test_a_run_folder_held_by_another_process_is_refused(runs, tmp_path):
    folder = copy_run(runs, "retrain", tmp_path)
    # another process taking RUN/.lock as a session does (flock, its pid inside), without importing torch
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import fcntl, os, time
        fd = os.open({str(folder / ".lock")!r}, os.O_RDWR | os.O_CREAT)
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.write(fd, str(os.getpid()).encode())
        print("locked", flush=True)
        time.sleep(60)
        """)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        before = (folder / "config.json").read_bytes()
        one_line_error(invoke("retrain", "--resume", folder, "--iterations", "3", "--quiet"),
                       str(folder), f"in use by another process (pid {holder.pid})")
        assert (folder / "config.json").read_bytes() == before
    finally:
        holder.kill()
        holder.wait()
    result = invoke("retrain", "--resume", folder, "--iterations", "3", "--quiet")  # free again
    assert result.exit_code == 0, result.output
    assert not (folder / ".lock").exists()


def test_compare_refuses_a_seed_given_twice(tmp_path):
    result = invoke("compare", "--seeds", "0,0", "--workers", "2", "--out", tmp_path / "cmp")
    assert result.exit_code == 2 and "each seed once" in result.output, result.output
    from bayesnas.analysis.compare import compare
    with pytest.raises(ConfigError, match="each once"):
        compare(config=RetrainConfig(), seeds=[0, 0], out=tmp_path / "cmp")
    assert not (tmp_path / "cmp").exists()


# 8. Fixed networks: the image shape they need, checked and named


def test_conv4_takes_non_square_images_and_names_too_small_ones():
    net = Conv4(in_channels=1, num_classes=5, hidden=4, image_size=(28, 16))
    assert net(torch.randn(2, 1, 28, 16)).shape == (2, 5)
    assert net.flat_features == 4 * 1 * 1
    with pytest.raises(ConfigError, match="images of 28x14: Conv4 halves each side 4 times and needs at least 16"):
        Conv4(image_size=(28, 14))


def test_retrain_conv4_on_non_square_data(tmp_path, small_omniglot):
    rng = np.random.default_rng(0)
    splits = {split: [ClassRecord(f"{split}{c}", "", rng.integers(0, 256, (6, 32, 16, 1), dtype=np.uint8))
                      for c in range(6)] for split in ("train", "val", "test")}
    path = tmp_path / "wide.h5"
    write_dataset(path, splits, "non-square", (32, 16), 1)
    assert invoke("retrain", "conv4", "--data", path, "--out", tmp_path / "run", *RETRAIN).exit_code == 0
    write_dataset(path, {s: [ClassRecord(r.name, "", r.images[:, :, :14]) for r in recs]
                         for s, recs in splits.items()}, "non-square", (32, 14), 1)
    one_line_error(invoke("retrain", "conv4", "--data", path, "--out", tmp_path / "run2", *RETRAIN),
                   f"{path}: images of 32x14: Conv4 halves each side 4 times")
    assert not (tmp_path / "run2").exists()
