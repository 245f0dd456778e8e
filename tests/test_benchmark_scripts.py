"""Every benchmark script starts as its documented command ``python benchmarks/X.py``
gives it, from any directory: it finds the repository's configs/ and experiments/."""

import glob
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = sorted(glob.glob(os.path.join(REPO, "benchmarks", "*.py")))


def test_there_are_benchmark_scripts():
  assert len(SCRIPTS) >= 5


@pytest.mark.parametrize("script", SCRIPTS, ids=os.path.basename)
def test_benchmark_script_imports_from_another_directory(script, tmp_path):
  env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
  result = subprocess.run([sys.executable, script, "--help"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-2000:]
  assert result.stdout.startswith("usage:"), result.stdout[:500]
