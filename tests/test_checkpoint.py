"""Checkpoints: round trip with PRNG keys, fallback from a damaged step, clear errors."""

import io
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gradnoise import checkpoint, progress
from gradnoise.errors import UsageError


def make_state(value):
  return {"w": jnp.full((3, 4), value, jnp.float32), "count": jnp.asarray(value, jnp.int32),
          "key": jax.random.key(int(value))}


def damage(directory, step):
  """Flips bytes in every data file of a saved step."""
  for root, _, files in os.walk(os.path.join(directory, str(step), "state")):
    for name in files:
      path = os.path.join(root, name)
      data = bytearray(open(path, "rb").read())
      if len(data) > 64:
        for i in range(32, len(data), 97):
          data[i] ^= 0xFF
        open(path, "wb").write(bytes(data))


def test_round_trip_keeps_keys_and_history(tmp_path):
  ckpt = checkpoint.BatchCheckpoints(str(tmp_path / "c"))
  assert ckpt.restore_latest(make_state(0.0)) is None
  ckpt.save(3, make_state(3.0), {"train_loss": [[1.5, float("nan")]]})
  epoch, state, history = ckpt.restore_latest(make_state(0.0))
  assert epoch == 3 and np.isnan(history["train_loss"][0][1])
  np.testing.assert_array_equal(state["w"], 3.0)
  assert jax.random.key_impl(state["key"]) == jax.random.key_impl(make_state(0.0)["key"])
  np.testing.assert_array_equal(jax.random.key_data(state["key"]),
                                jax.random.key_data(jax.random.key(3)))


def test_damaged_newest_step_falls_back_to_previous(tmp_path):
  directory = str(tmp_path / "c")
  ckpt = checkpoint.BatchCheckpoints(directory)
  ckpt.save(1, make_state(1.0), {})
  ckpt.save(2, make_state(2.0), {})
  damage(directory, 2)
  epoch, state, _ = checkpoint.BatchCheckpoints(directory).restore_latest(make_state(0.0))
  assert epoch == 1
  np.testing.assert_array_equal(state["w"], 1.0)


def test_all_steps_damaged_is_a_clear_error(tmp_path):
  directory = str(tmp_path / "c")
  ckpt = checkpoint.BatchCheckpoints(directory)
  ckpt.save(1, make_state(1.0), {})
  damage(directory, 1)
  with pytest.raises(UsageError, match="no usable checkpoint"):
    checkpoint.BatchCheckpoints(directory).restore_latest(make_state(0.0))


def test_progress_lines_when_not_a_terminal():
  out = io.StringIO()
  bar = progress.GroupProgress("group 0", total_run_steps=100, runs_at_once=4, stream=out,
                               interval=0.0)
  bar.advance(40, {"test_accuracy": 0.5})
  bar.advance(60, {"test_accuracy": 0.75})
  bar.close()
  lines = out.getvalue().splitlines()
  assert len(lines) == 2
  assert lines[-1].startswith("group 0: 100/100 run-steps (100%)")
  for part in ("steps/s", "run-steps/s", "ETA", "test_accuracy=0.75"):
    assert part in lines[-1]
