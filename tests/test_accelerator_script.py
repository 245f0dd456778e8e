"""benchmarks/accelerator.py: the budget, the probe's estimate, the per-seed configs.

A full check of the training path (probe, then a full or reduced run and its report) takes
minutes on a CPU; it is the manual check in benchmarks/README.md ("accelerator.py").
"""

import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "benchmarks"))

import accelerator  # noqa: E402

from gradnoise import launch  # noqa: E402


def test_a_spent_budget_starts_nothing_and_says_so(tmp_path):
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=REPO)
  proc = subprocess.run(
      [sys.executable, "benchmarks/accelerator.py", f"--budget={accelerator.RESERVE_S}",
       f"--out={tmp_path}", "--runs=1", "--seeds=2"],
      cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  summary = (tmp_path / "summary.md").read_text()
  for job in ("sweep_throughput, 1 runs", "noise_overhead", "noise_options", "table1", "table2",
              "table6_seed0"):
    assert f"| {job} | skipped |" in summary, summary
  assert "table6_seed1" not in summary  # no further seed once one is skipped
  assert summary in proc.stdout
  assert not (tmp_path / "table1" / "workdir").exists()


def test_the_probe_estimate_separates_fixed_and_per_epoch_time():
  lines = [(5.0, "plan: 40 runs in 2 compile group(s); devices: 1 x cpu (cpu)"),
           (5.0, "  group 0: 30 runs, 2 epochs x 8 steps, batch 500, 10 runs at once"),
           (5.0, "  group 1: 10 runs, 2 epochs x 8 steps, batch 500, 10 runs at once")]
  rows = {(0, 1): 20.0, (1, 1): 20.0, (0, 2): 22.5, (1, 2): 22.5}
  fixed, per_epoch = accelerator.timed_probe(lines, rows, wall=60.0)
  assert per_epoch == 2.5 * 4  # 4 batches of runs
  assert fixed == 60.0 - 2 * per_epoch
  assert accelerator.timed_probe(lines, {}, wall=60.0) == (0.0, 30.0)


def test_a_seed_config_runs_one_seed_of_the_sweep(tmp_path):
  spec = accelerator.seed_config(str(tmp_path), "configs/neural_gpu.py:table6", 3)
  config, get_sweep, _ = launch.load_config_file(spec)
  _, full_sweep, _ = launch.load_config_file(os.path.join(REPO, "configs/neural_gpu.py:table6"))
  sweep = get_sweep()
  assert {o["seed"] for o in sweep} == {3}
  assert len(sweep) * 10 == len(full_sweep())
  assert config.num_epochs == accelerator.config_epochs("configs/neural_gpu.py:table6")
