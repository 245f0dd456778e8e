"""gradnoise.run on 2 processes x 2 CPU devices equals one process (jax.distributed)."""

import csv
import os
import socket
import subprocess
import sys

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ARGS = ["--config=configs/mnist_mlp.py:quick", "--config.model.depth=3",
        "--config.model.width=16", "--config.num_epochs=2", "--config.batch_size=256",
        "--config.train.runs_per_batch=6"]


def free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def env(devices):
  return dict(os.environ, JAX_PLATFORMS="cpu",
              XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")


def rows(workdir):
  with open(os.path.join(workdir, "results.csv"), newline="") as f:
    return list(csv.DictReader(f))


def test_two_processes_equal_one(tmp_path):
  multi = str(tmp_path / "multi")
  port = free_port()
  procs = [subprocess.Popen(
      [sys.executable, "-m", "gradnoise.run", *ARGS, f"--workdir={multi}",
       f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2", f"--process_id={i}"],
      cwd=REPO, env=env(2), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
      for i in range(2)]
  try:
    outputs = [p.communicate(timeout=300)[0] for p in procs]
  finally:
    for p in procs:
      p.kill()
  assert [p.returncode for p in procs] == [0, 0], outputs[0][-2000:] + outputs[1][-2000:]
  assert "plan: 24 runs" in outputs[0] and "plan:" not in outputs[1]  # process 0 reports
  single = str(tmp_path / "single")
  subprocess.run([sys.executable, "-m", "gradnoise.run", *ARGS, f"--workdir={single}"],
                 cwd=REPO, env=env(4), check=True, capture_output=True, timeout=300)
  # Same global device count: bitwise identical results and metrics.
  text = lambda d, name: open(os.path.join(d, name)).read()
  assert text(multi, "results.csv") == text(single, "results.csv")
  lines = lambda d: sorted(open(os.path.join(d, "metrics.jsonl")).read().splitlines())
  assert lines(multi) == lines(single) and len(lines(multi)) == 48
  # One device, runs padded differently: equal within float tolerance.
  one = str(tmp_path / "one")
  subprocess.run([sys.executable, "-m", "gradnoise.run", *ARGS, f"--workdir={one}"],
                 cwd=REPO, env=env(1), check=True, capture_output=True, timeout=300)
  for a, b in zip(rows(multi), rows(one), strict=True):
    np.testing.assert_allclose(float(a["train_loss"]), float(b["train_loss"]), rtol=1e-5)
    np.testing.assert_allclose(float(a["test_accuracy"]), float(b["test_accuracy"]), atol=2e-3)
