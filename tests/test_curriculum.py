"""The windowed curriculum test shared by NRAM and the Neural GPU."""

import jax.numpy as jnp
import numpy as np

from experiments import curriculum


def run_window(step_values, window=3, threshold=0.1):
  extra = curriculum.window_start("window_cells")
  decisions = []
  for errors, count in step_values:
    success, extra = curriculum.window_step(extra, jnp.float32(errors), jnp.float32(count),
                                            "window_cells", window, jnp.float32(threshold))
    decisions.append(bool(success))
  return decisions, {k: float(v) for k, v in extra.items()}


def test_success_only_at_the_end_of_a_window_below_threshold():
  # Window 1: 2 + 0 + 0 errors of 30 cells (6.7% < 10%): success at its third step only.
  # Window 2: 4 of 30 (13.3%): no success; the sums restart after both.
  decisions, extra = run_window([(2, 10), (0, 10), (0, 10), (2, 10), (1, 10), (1, 10)])
  assert decisions == [False, False, True, False, False, False]
  assert extra == {"window_steps": 0.0, "window_errors": 0.0, "window_cells": 0.0}


def test_an_empty_window_never_succeeds_and_partial_sums_carry():
  decisions, _ = run_window([(0, 0)] * 3)
  assert decisions == [False] * 3
  decisions, extra = run_window([(1, 4), (2, 6)])
  assert decisions == [False, False]
  np.testing.assert_allclose([extra["window_steps"], extra["window_errors"],
                              extra["window_cells"]], [2, 3, 10])


def test_errors_equal_to_threshold_times_count_fail():
  decisions, _ = run_window([(1, 10)] * 3)  # exactly 10%: not below
  assert decisions == [False, False, False]
