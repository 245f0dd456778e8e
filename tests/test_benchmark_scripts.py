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


def test_step_kernels_counts_the_scan_body_including_tuple_results():
  """noise_overhead.step_kernels: the computation with the most fusions, each top-level
  kernel once (a tuple-typed fusion, a while loop), views, tuples and constants not."""
  import importlib.util
  spec = importlib.util.spec_from_file_location(
      "noise_overhead", os.path.join(REPO, "benchmarks", "noise_overhead.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  text = """%small (p: f32[2]) -> f32[2] {
  %p = f32[2]{0} parameter(0)
  ROOT %f = f32[2]{0} fusion(%p), kind=kLoop, calls=%c
}

%body (arg: (s32[], f32[2])) -> (s32[], f32[2]) {
  %arg = (s32[], f32[2]{0}) parameter(0)
  %a = f32[2]{0} get-tuple-element(%arg), index=1
  %b = f32[2]{0} bitcast(%a)
  %k = f32[] constant(1)
  %f1 = f32[2]{0} fusion(%b), kind=kLoop, calls=%c1
  %f2 = (f32[], f32[]) fusion(%f1, %a), kind=kLoop, calls=%c2
  %w = (s32[], u32[2]{0}) while(%arg), condition=%cond, body=%inner
  %d = f32[2,2]{1,0} dot(%f1, %f1), lhs_contracting_dims={}, rhs_contracting_dims={}
  ROOT %t = (s32[], f32[2]{0}) tuple(%k, %f1)
}
"""
  assert module.step_kernels(text) == 4  # f1, f2, while, dot
