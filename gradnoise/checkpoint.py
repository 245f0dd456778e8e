"""Checkpoints of a batch of runs (orbax-checkpoint), verified by a content hash.

A checkpoint holds the whole training state of the batch (parameters, optimizer state
including noise keys and counts, diverged flags), the epoch reached and the metric
history. Orbax writes each step to a temporary directory and commits it by renaming, so a
killed save leaves no step behind. On top of that we store a SHA-256 of the state's bytes:
a restored state whose hash differs is rejected and the previous step is tried, so a
damaged checkpoint never resumes silently with wrong numbers.
"""

from __future__ import annotations

import hashlib
import logging
from typing import Any, NamedTuple

import jax
import numpy as np
import orbax.checkpoint as ocp

from gradnoise.errors import UsageError


class Restored(NamedTuple):
  epoch: int
  state: Any
  history: dict[str, list[list[float]]]


def _is_key(x: Any) -> bool:
  return isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


def _to_storable(state: Any) -> Any:
  """Typed PRNG keys become their raw uint32 data (orbax stores plain arrays)."""
  return jax.tree.map(lambda x: jax.random.key_data(x) if _is_key(x) else x, state)


def _digest(storable: Any) -> str:
  """SHA-256 of the full values (gathered from all processes)."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    storable = multihost_utils.process_allgather(storable, tiled=True)
  h = hashlib.sha256()
  for leaf in jax.tree.leaves(storable):
    arr = np.asarray(jax.device_get(leaf))
    h.update(str((arr.shape, arr.dtype)).encode())
    h.update(np.ascontiguousarray(arr).tobytes())
  return h.hexdigest()


class BatchCheckpoints:
  """Checkpoints of one batch of runs in ``directory`` (the last two are kept).

  ``tag`` identifies what wrote them (the sweep): a checkpoint with another tag is never
  restored.
  """

  def __init__(self, directory: str, tag: str = ""):
    self.directory, self.tag = directory, tag
    options = ocp.CheckpointManagerOptions(max_to_keep=2, enable_async_checkpointing=False)
    self._manager = ocp.CheckpointManager(directory, options=options)

  def save(self, epoch: int, state: Any, history: dict[str, list[list[float]]]) -> None:
    storable = _to_storable(state)
    meta = {"epoch": epoch, "history": history, "sha256": _digest(storable), "tag": self.tag}
    self._manager.save(epoch, args=ocp.args.Composite(
        state=ocp.args.StandardSave(storable), meta=ocp.args.JsonSave(meta)))
    self._manager.wait_until_finished()

  def restore_latest(self, template: Any) -> Restored | None:
    """The newest checkpoint that restores and verifies, or None if there is none.

    ``template`` is a state of the right structure, shapes and shardings (e.g. a fresh
    init). Raises UsageError when checkpoints exist but none of them is usable.
    """
    steps = sorted(self._manager.all_steps(), reverse=True)
    storable_template = _to_storable(template)
    abstract = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
        storable_template)
    problems = []
    for step in steps:
      try:
        restored = self._manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()))
        meta = restored["meta"]
        if meta.get("tag", "") != self.tag:
          raise UsageError(f"checkpoint {self.directory}/{step} was written by another sweep; "
                           "delete that directory to retrain these runs, or pass --overwrite "
                           "to restart the sweep.")
        if meta.get("sha256") != _digest(restored["state"]):
          raise ValueError("content hash mismatch")
      except UsageError:
        raise
      except Exception as e:  # noqa: BLE001 - any failure means this step is unusable
        problems.append(f"step {step}: {type(e).__name__}: {str(e)[:200]}")
        logging.warning("checkpoint %s/%s is unusable (%s); trying an older one.",
                        self.directory, step, problems[-1])
        continue
      state = jax.tree.map(
          lambda t, x: jax.random.wrap_key_data(x, impl=jax.random.key_impl(t))
          if _is_key(t) else x, template, restored["state"])
      return Restored(int(meta["epoch"]), state, meta["history"])
    if steps:
      raise UsageError(f"no usable checkpoint in {self.directory} ({'; '.join(problems)}); "
                       "delete that directory to retrain these runs, or pass --overwrite "
                       "to restart the sweep.")
    return None
