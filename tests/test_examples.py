"""examples/: the flax CNN example runs through the command line (tiny variant)."""

import csv
import io
import os

from gradnoise import launch, run

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(REPO, "examples", "mnist_cnn_config.py")


def test_mnist_cnn_example_runs_noise_vs_no_noise(tmp_path):
  out, err = io.StringIO(), io.StringIO()
  code = run.main(["gradnoise.run", f"--config={CONFIG}:tiny", f"--workdir={tmp_path}"],
                  out, err)
  assert code == 0, err.getvalue()
  with open(tmp_path / "results.csv") as f:
    rows = list(csv.DictReader(f))
  assert [(r["noise.eta"], r["seed"]) for r in rows] == [
      (eta, str(seed)) for eta in ("0.0", "0.01") for seed in range(4)]
  assert all(0 <= float(r["test_accuracy"]) <= 1 and r["diverged"] == "false" for r in rows)
  assert "plan: 8 runs in 1 compile group(s)" in out.getvalue()
  assert "no noise: best" in out.getvalue() and "noise: best" in out.getvalue()


def test_mnist_cnn_config_names_the_example_by_file():
  config, get_sweep, _ = launch.load_config_file(CONFIG)
  assert config.experiment == os.path.join(REPO, "examples", "mnist_cnn.py")
  assert config.num_epochs == 10 and config.model.features == (8, 16)
  assert len(get_sweep()) == 8
  assert launch.variants(CONFIG) == ("default", "tiny")
