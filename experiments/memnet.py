"""Experiment 2 of Neelakantan et al. (2015): End-To-End Memory Networks on bAbI (Table 2).

The model of Sukhbaatar et al. (2015), "End-To-End Memory Networks", arXiv:1503.08895, as
their reference code (``MemN2N-babi-matlab``) builds it for bAbI. Written in plain JAX
rather than through gradnoise.flax_experiment: its parameters are the reference's K + 1
tied embedding matrices, indexed and zeroed row by row (nil word, time words), which a flax
module would only wrap, and its training needs per-run state (linear start) that the
supervised helper does not cover.

* K hops (3), embedding d (20), adjacent weight tying (sec. 2.2): matrices E_0..E_K with
  B = A^1 = E_0, C^k = A^{k+1} = E_k, answer W^T = C^K = E_K; logits over all E_K rows.
* Position encoding (sec. 4.1): a sentence is sum_j l_j * A x_j. ``reference`` uses the
  code's l_kj = 1 + 4 (k - (d+1)/2)(j - (J+1)/2) / (d J); ``paper`` the printed
  l_kj = (1 - j/J) - (k/d)(1 - 2j/J), which is half of it with centres d/2, J/2.
  J is the padded sentence length + 1.
* Temporal encoding (sec. 4.1): memory slot i holds a "time word" at position J whose
  embedding rows (vocabulary + i - 1) are T_A / T_C, tied like the rest of each matrix.
* Random noise (sec. 4.1, "RN"): in training, time indices are a sorted random subset of
  1..n + b, b ~ U{0..ceil(rate n)} for n memories: empty memories at random times.
* Softmax attention over all M memory slots, as the reference (``memory/Memory.m``): an
  empty slot (all empty words) has a zero embedding, so it scores 0 and adds 0, a learned
  "attend to nothing" that scales the hop's output down. ``model.mask_empty_slots`` leaves
  empty slots out of the softmax instead (a departure). Linear attention (no softmax)
  during the first ``model.linear_start_epochs`` epochs ("linear start", sec. 4.2),
  continuing from those weights; the choice is a traced function of the epoch
  (``hp["epoch"]``, set by the trainer), so one-stage and two-stage runs share one
  compiled program. The reference then restarts the learning-rate schedule
  (``train_linear_start.m``): ``optimizer.restart_epoch`` = linear_start_epochs.
* The empty word (id 0) has a zero embedding in every matrix (the reference zeroes it
  after each update); weights are N(0, init_std^2), 0.1 in the reference.

The training loss is the *sum* of the batch's cross-entropies (the reference's
``size_average = false``), so its learning rates (0.01, 0.005 with linear start), clipping
of each matrix to spectral norm 40 (``clip.norm_kind``) and the noise eta 1.0 keep their
meaning. Runs select their task with the traced ``data.task`` from the tasks loaded
together (``data.tasks``), stacked on the Dataset's task axis.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from experiments import babi_data
from gradnoise import experiment, fields
from gradnoise.errors import UsageError

Params = list[jax.Array]
Batch = dict[str, jax.Array]
HParams = dict[str, jax.Array]

POSITION_ENCODINGS = ("reference", "paper")
MASKED_SCORE = -1e30  # attention score of an empty memory slot with mask_empty_slots


def position_encoding(length: int, dim: int, kind: str = "reference") -> np.ndarray:
  """l[j-1, k-1] for word position j = 1..J and embedding index k = 1..d (see module doc)."""
  j = np.arange(1, length + 1, dtype=np.float64)[:, None]
  k = np.arange(1, dim + 1, dtype=np.float64)[None, :]
  if kind == "paper":
    enc = (1 - j / length) - (k / dim) * (1 - 2 * j / length)
  else:
    enc = 1 + 4 * (k - (dim + 1) / 2) * (j - (length + 1) / 2) / (dim * length)
  return enc.astype(np.float32)


def memory_times(present: jax.Array, key: jax.Array | None = None,
                 rate: jax.Array | float = 0.0) -> jax.Array:
  """Time index (1 = most recent) of each memory slot [B, M], slot 0 most recent.

  Without a key: slot i has time i + 1. With a key, random noise as the reference
  (``train.m``, ``randomize_time``): for n memories, the times are the sorted draw of n
  distinct values from 1..n + b, b ~ U{0..ceil(rate n)}, capped at M.
  """
  batch, size = present.shape
  slots = jnp.arange(size)
  if key is None:
    return jnp.broadcast_to(slots + 1, (batch, size))
  n = jnp.sum(present, -1)
  blank_key, order_key = jax.random.split(key)
  blanks = jax.random.randint(blank_key, (batch,), 0, jnp.ceil(rate * n).astype(jnp.int32) + 1)
  span = 2 * size  # n + b <= 2 M for rate <= 1
  scores = jax.random.uniform(order_key, (batch, span))
  scores = jnp.where(jnp.arange(span) < (n + blanks)[:, None], scores, 2.0)
  chosen = jnp.argsort(scores, -1)[:, :size]  # first n: a random n-subset of 0..n+b-1
  chosen = jnp.where(slots < n[:, None], chosen, span)
  return jnp.minimum(jnp.sort(chosen, -1) + 1, size)


def _nil_zeroed(matrix: jax.Array) -> jax.Array:
  return matrix.at[0].set(0.0)


def apply(params: Params, stories: jax.Array, queries: jax.Array, times: jax.Array,
          use_softmax: jax.Array | bool, config: ml_collections.ConfigDict) -> jax.Array:
  """Answer logits [B, rows] for stories [B, M, S], queries [B, S] and times [B, M]."""
  hops = len(params) - 1
  size, length = stories.shape[1:]
  present = jnp.any(stories > 0, -1)
  first_time_word = params[0].shape[0] - size
  time_words = jnp.where(present, first_time_word + times - 1, 0)
  memory_words = jnp.concatenate([stories, time_words[..., None]], -1)
  enc = position_encoding(length + 1, params[0].shape[1], config.model.position_encoding)
  matrices = [_nil_zeroed(m) for m in params]
  u = jnp.sum(matrices[0][queries] * enc[:length], -2)
  memories = [jnp.sum(m[memory_words] * enc, -2) for m in matrices]  # E_k x: [B, M, d]
  mask = config.model.mask_empty_slots
  for hop in range(hops):
    scores = jnp.einsum("bmd,bd->bm", memories[hop], u)
    soft = jax.nn.softmax(jnp.where(present, scores, MASKED_SCORE) if mask else scores, -1)
    weights = jnp.where(use_softmax, soft, scores)
    u = u + jnp.einsum("bm,bmd->bd", weights, memories[hop + 1])
  return u @ matrices[hops].T


def _use_softmax(hp: HParams) -> jax.Array:
  """Linear start ends after ``linear_start_epochs`` or, with a patience, earlier on a
  validation-loss plateau (``softmax_on``, set by :func:`after_eval`)."""
  return (hp["epoch"] >= hp["linear_start_epochs"]) | hp.get("softmax_on", False)


def init_state(key: jax.Array, batch: Batch, hp: HParams,
               config: experiment.GroupConfig) -> dict[str, jax.Array]:
  """Linear-start state: softmax switched on early, best validation loss, bad evals."""
  return {"softmax_on": jnp.zeros([], bool), "best_valid_loss": jnp.full([], jnp.inf),
          "bad_evals": jnp.zeros([], jnp.int32)}


def after_eval(extra, metrics, hp: HParams, config: ml_collections.ConfigDict):
  """Switches linear start off once the validation loss has not improved for
  ``model.linear_start_patience`` evaluations in a row (0: only the epoch count)."""
  patience = config.model.linear_start_patience
  if not patience:
    return extra
  loss = metrics["valid_loss"]
  improved = loss < extra["best_valid_loss"]
  bad = jnp.where(improved, 0, extra["bad_evals"] + 1)
  linear = ~_use_softmax({**hp, **extra})
  return {"softmax_on": extra["softmax_on"] | (linear & (bad >= patience)),
          "best_valid_loss": jnp.minimum(loss, extra["best_valid_loss"]),
          "bad_evals": bad}


def loss_fn(params: Params, batch: Batch, key: jax.Array, hp: HParams,
            config: ml_collections.ConfigDict) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Summed cross-entropy of the batch (reference), with random-noise time indices."""
  present = jnp.any(batch["stories"] > 0, -1)
  times = memory_times(present, key, hp["random_time"])
  logits = apply(params, batch["stories"], batch["queries"], times, _use_softmax(hp), config)
  loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch["answers"]).sum()
  error = jnp.mean(jnp.argmax(logits, -1) != batch["answers"])
  return loss, {"error": error}


def eval_fn(params: Params, batch: Batch, hp: HParams,
            config: ml_collections.ConfigDict) -> dict[str, jax.Array]:
  times = memory_times(jnp.any(batch["stories"] > 0, -1))
  logits = apply(params, batch["stories"], batch["queries"], times, _use_softmax(hp), config)
  return {
      "error": (jnp.argmax(logits, -1) != batch["answers"]).astype(jnp.float32),
      "loss": optax.softmax_cross_entropy_with_integer_labels(logits, batch["answers"]),
  }


@functools.lru_cache(maxsize=1)
def _load(path: str | None, babi_set: str, tasks: tuple[int, ...],
          memory_size: int) -> babi_data.BabiData:
  return babi_data.load_babi(path, babi_set, tasks, memory_size)


def _data(config: ml_collections.ConfigDict) -> babi_data.BabiData:
  d = config.data
  return _load(d.path, d.babi_set, tuple(d.tasks), d.memory_size)


def load_data(config: ml_collections.ConfigDict) -> experiment.Dataset:
  data = _data(config)
  return experiment.Dataset(
      train=data.splits["train"],
      evals={"valid": data.splits["valid"], "test": data.splits["test"]},
      description=data.description,
      num_tasks=len(data.tasks),
  )


def init_params(key: jax.Array, batch: Batch, hp: HParams,
                config: experiment.GroupConfig) -> Params:
  """E_0..E_K, each [vocabulary + memory size, d] ~ N(0, init_std^2)."""
  data = _data(config)
  shape = (len(data.vocab) + data.memory_size, config.model.embedding_dim)
  return [jax.random.normal(jax.random.fold_in(key, i), shape, jnp.float32) * hp["init_std"]
          for i in range(config.model.hops + 1)]


def hparams(config: ml_collections.ConfigDict) -> dict[str, float]:
  return {
      "task": list(config.data.tasks).index(config.data.task),
      "linear_start_epochs": config.model.linear_start_epochs,
      "init_std": config.model.init_std,
      "random_time": config.model.random_time,
  }


FIELDS = {
    "model.hops": fields.integer(1),
    "model.embedding_dim": fields.integer(1),
    "model.linear_start_epochs": fields.integer(0),
    "model.linear_start_patience": fields.integer(0),
    "model.init_std": fields.number(0),
    "model.random_time": fields.number(0, 1),
    "model.position_encoding": fields.choice(*POSITION_ENCODINGS),
    "model.mask_empty_slots": fields.flag(),
    "data.path": fields.text(description="the bAbI tasks_1-20_v1-2 folder, or download"),
    "data.babi_set": fields.choice(*babi_data.BABI_SETS),
    "data.tasks": fields.integers(min(babi_data.TASKS), max(babi_data.TASKS)),
    "data.task": fields.integer(min(babi_data.TASKS), max(babi_data.TASKS)),
    "data.memory_size": fields.integer(1),
}


def validate(config: ml_collections.ConfigDict) -> None:
  """Rules between fields (each field's own range is in FIELDS)."""
  tasks = list(config.data.tasks)
  if len(set(tasks)) != len(tasks):
    raise UsageError(f"config field data.tasks={tasks!r} is invalid; accepted: distinct task "
                     "ids.", field="data.tasks")
  if config.data.task not in tasks:
    raise UsageError(f"config field data.task={config.data.task!r} is invalid; accepted: one "
                     f"of data.tasks {tasks}.", field="data.task")
  restart, linear = config.optimizer.get("restart_epoch", 0), config.model.linear_start_epochs
  if restart not in (0, linear):
    raise UsageError(f"config field optimizer.restart_epoch={restart!r} is invalid; accepted: "
                     f"0 (one schedule) or model.linear_start_epochs={linear} (a fresh "
                     "schedule for the softmax stage, as the reference).",
                     field="optimizer.restart_epoch")


EXPERIMENT = experiment.Experiment(
    name="memnet",
    traced_fields=("data.task", "model.linear_start_epochs", "model.init_std",
                   "model.random_time"),
    fields=FIELDS,
    validate=validate,
    load_data=load_data,
    hparams=hparams,
    init_params=init_params,
    loss_fn=loss_fn,
    eval_fn=eval_fn,
    summary_metric="test_error",
    curves=("train_loss", "train_error", "valid_error", "test_error"),
    state=experiment.RunStateHooks(init=init_state, after_eval=after_eval),
)
