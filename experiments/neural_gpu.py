"""Experiment 5 of Neelakantan et al. (2015): the Neural GPU on binary multiplication.

Model and training follow Kaiser & Sutskever (2015), "Neural GPUs Learn Algorithms",
arXiv:1511.08228 (sec. 2-4), and their reference trainer (tensorflow/models,
``neural_gpu``); Neelakantan et al. add gradient noise (eta 1.0, after clipping, Adam) and
count the runs whose test error is below 1/2/3/5% (Table 6). Written in plain JAX rather
than through gradnoise.flax_experiment: the relaxation keeps r copies of every CGRU kernel
with a pull term between them and a curriculum in per-run state, outside the supervised
helper's cases; and flax's Conv inside the trainer's scan is about 10x slower on CPU
(jax-ml/jax#12868, measured in examples/mnist_cnn.py), where the 3x3 convolutions here are
written as one matrix product.

Model. The state s has shape [length n, width w = 4, m maps] per example. The input
symbols are embedded (tanh of a learned table, then a linear map) into the first row; the
other rows start at 0. A step applies ``model.cgrus`` CGRUs (sec. 2):

    u = sigma'(U * s + B'),  r = sigma'(R * s + B''),
    CGRU(s) = u . s + (1 - u) . tanh(W * (r . s) + B),
    sigma'(x) = max(0, min(1, 1.2 sigmoid(x) - 0.1)),

with 3x3 SAME convolutions (U and R are computed as one convolution with 2m outputs).
The gate biases B', B'' start at 1 and B at 0, as the reference (bias_start 1.0 for both
gates). After n steps the first row goes through a linear map and a softmax over {pad,
0, 1}. Positions past the input are masked to 0 after every CGRU. The convolutions are
matrix products of 3x3 patches (see ``_conv``).

Loss and metrics. Cross-entropy averaged over the input positions (the target there is a
result bit or pad), as the reference's weights. Per example: sequence error (any result
bit wrong) and the fraction of wrong result bits, over the target's bit positions as the
reference's ``data_utils.accuracy``; the trainer reports ``<split>_seq_error`` and
``<split>_bit_error``. Table 6 thresholds the test error (we read it as the sequence
error on the 200-bit test examples; both are reported).

Fixed shapes. Training examples are padded to L = 2 * train_bits + 1 (test examples to
2 * test_bits + 1). The model always scans L steps, but an example with n input symbols
stops changing after its own n steps (the state is frozen), so every example sees
exactly the paper's n steps, however long the others in its batch are. The compute is
that of L steps: a compile group stays one program whatever the curriculum lengths of
its runs (a step count that depends on data cannot be reverse-differentiated by scan).

Training tricks (sec. 4 and the reference trainer):
- Curriculum on the operand length k. Each example draws k uniformly in [1, current];
  with probability 0.6 the larger of two such draws; then with probability 0.25 the
  larger of that and a draw from [1, train_bits] (the reference's mixed curriculum, drawn
  per batch there and per example here). Every ``curriculum.window`` steps, if the
  sequence error of the examples with k <= current was below ``curriculum.threshold``,
  the current length grows by one bit (the reference grows the whole input length by one
  symbol, half a bit).
- Dropout on the state before every step, with keep probability
  1 - dropout_rate * 8 / max(8, n) (the reference: rate * 8 / padded length).
- Relaxed parameter sharing: r copies of the CGRU parameters, step i uses copy i mod r,
  and the loss adds pull * sum_copies ||p_copy - mean||^2. On every curriculum success
  the pull is multiplied by ``relax.pull_growth`` while below ``relax.pull_max``; once it
  has reached it, a success switches the model to the mean of the copies for good (the
  reference assigns every copy the mean at such points; pull keeps them together).
Not reproduced: the reference's learning-rate decay on plateaus, its truncated-normal
noise scaled by the error rate (we use the paper's annealed Gaussian noise), Adam's
epsilon 1e-4 (optax default 1e-8).

Per-run curriculum state (current length, pull, averaged flag, window sums) lives outside
the gradient: ``init_state`` / ``after_step`` (``Experiment.state``). The trainer passes it to ``loss_fn`` and
``eval_fn`` merged into ``hp`` and logs it as ``state_bits``, ``state_pull``, ...
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from experiments import binary_tasks, curriculum
from gradnoise import experiment, fields
from gradnoise.errors import UsageError

Params = dict[str, Any]
CUTOFF = 1.2  # sigma'(x) = clip(1.2 sigmoid(x) - 0.1, 0, 1)
PREFER_LONGER, MIX_ALL = 0.6, 0.25  # curriculum draw probabilities (reference trainer)
KERNEL = 3


def gate_cutoff(x: jax.Array) -> jax.Array:
  """sigma'(x) = max(0, min(1, 1.2 sigmoid(x) - 0.1)) (Kaiser & Sutskever 2015, sec. 2)."""
  return jnp.clip(CUTOFF * jax.nn.sigmoid(x) - (CUTOFF - 1.0) / 2, 0.0, 1.0)


@jax.checkpoint  # the backward pass recomputes the patches instead of storing them
def _patches(x: jax.Array) -> jax.Array:
  """The 3x3 neighbourhood of every cell, zero padded: [B, n, w, m] -> [B, n, w, 9m]."""
  n, w = x.shape[1:3]
  padded = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  return jnp.concatenate([padded[:, i:i + n, j:j + w] for i in range(KERNEL)
                          for j in range(KERNEL)], -1)


def _conv(x: jax.Array, w: jax.Array, b: jax.Array) -> jax.Array:
  """3x3 SAME convolution over (length, width), kernel [3, 3, m, out] (HWIO).

  Written as patches @ kernel: on XLA:CPU the backward pass of
  ``lax.conv_general_dilated`` inside a scan was ~12x slower, and under vmap over runs
  (a grouped convolution) slower still, than this matrix product (measured).
  """
  return _patches(x) @ w.reshape(-1, w.shape[-1]) + b


def cgru(s: jax.Array, p: Params) -> jax.Array:
  """One convolutional gated recurrent unit (Kaiser & Sutskever 2015, sec. 2)."""
  u, r = jnp.split(gate_cutoff(_conv(s, p["gates_w"], p["gates_b"])), 2, axis=-1)
  return u * s + (1.0 - u) * jnp.tanh(_conv(r * s, p["cand_w"], p["cand_b"]))


def _uniform_scaling(key: jax.Array, shape: tuple[int, ...], fan_in: int,
                     scale: jax.Array) -> jax.Array:
  """U(-a, a), a = scale * sqrt(3 / fan_in): the reference's uniform unit scaling init
  (scale 1.8 * init_weight; fan_in of a kernel = all its dimensions but the output)."""
  return jax.random.uniform(key, shape, jnp.float32, -1.0, 1.0) * scale * np.sqrt(3.0 / fan_in)


def init_params(key: jax.Array, batch: experiment.Batch, hp: experiment.HParams,
                config: experiment.GroupConfig) -> Params:
  """Embedding, input map, r x cgrus CGRU parameter copies (independent draws), output map."""
  m, r, c = config.model.maps, config.relax.copies, config.model.cgrus
  scale = 1.8 * hp["init_scale"]
  keys = jax.random.split(key, 5)
  kernel = (r, c, KERNEL, KERNEL, m)  # leading axes: relaxation copy, CGRU within a step
  conv_fan_in = KERNEL * KERNEL * m
  return {
      "embed": jax.random.uniform(keys[0], (binary_tasks.INPUT_SYMBOLS, m), jnp.float32,
                                  -1.7, 1.7),
      "input": {"w": _uniform_scaling(keys[1], (m, m), m, scale), "b": jnp.zeros(m)},
      "cgru": {
          "gates_w": _uniform_scaling(keys[2], kernel + (2 * m,), conv_fan_in, scale),
          "gates_b": jnp.ones((r, c, 2 * m)),
          "cand_w": _uniform_scaling(keys[3], kernel + (m,), conv_fan_in, scale),
          "cand_b": jnp.zeros((r, c, m)),
      },
      "output": {"w": _uniform_scaling(keys[4], (m, binary_tasks.OUTPUT_SYMBOLS), m, scale),
                 "b": jnp.zeros(binary_tasks.OUTPUT_SYMBOLS)},
  }


def relaxation_distance(copies: Params) -> jax.Array:
  """sum over parameters and copies of ||p_copy - mean over copies||^2 (sec. 4)."""
  return sum(jnp.sum(jnp.square(p - jnp.mean(p, 0))) for p in jax.tree.leaves(copies))


def step_params(copies: Params, step: jax.Array) -> Params:
  """The CGRU parameters of step ``step``: copy ``step mod r``."""
  r = jax.tree.leaves(copies)[0].shape[0]
  return jax.tree.map(lambda p: jax.lax.dynamic_index_in_dim(p, step % r, keepdims=False),
                      copies)


def apply(params: Params, inputs: jax.Array, hp: experiment.HParams,
          config: ml_collections.ConfigDict,
          dropout_key: jax.Array | None = None) -> jax.Array:
  """Output logits [B, L, 3] for input symbols [B, L]; dropout when a key is given."""
  mask = (inputs != binary_tasks.PAD).astype(jnp.float32)
  n = jnp.sum(mask, 1).astype(jnp.int32)
  mask4 = mask[:, :, None, None]
  first = jnp.tanh(params["embed"][inputs]) @ params["input"]["w"] + params["input"]["b"]
  rows = jnp.zeros(first.shape[:2] + (config.model.width - 1, first.shape[-1]))
  state = jnp.concatenate([first[:, :, None], rows], 2) * mask4
  copies = jax.tree.map(
      lambda p: jnp.where(hp["averaged"], jnp.broadcast_to(jnp.mean(p, 0), p.shape), p),
      params["cgru"])
  keep = 1.0 - hp["dropout_rate"] * 8.0 / jnp.maximum(8.0, n.astype(jnp.float32))
  keep = keep[:, None, None, None]

  def step(state, i):
    x = state
    if dropout_key is not None:
      kept = jax.random.bernoulli(jax.random.fold_in(dropout_key, i), keep, x.shape)
      x = jnp.where(kept, x / keep, 0.0)
    p = step_params(copies, i)
    for j in range(config.model.cgrus):
      x = cgru(x, jax.tree.map(lambda a: a[j], p)) * mask4
    return jnp.where((i < n)[:, None, None, None], x, state), None

  if config.model.remat:
    step = jax.checkpoint(step)
  state, _ = jax.lax.scan(step, state, jnp.arange(inputs.shape[1]))
  return state[:, :, 0] @ params["output"]["w"] + params["output"]["b"]


def errors(logits: jax.Array, targets: jax.Array) -> dict[str, jax.Array]:
  """Per example: any wrong result bit (sequence error) and the fraction of wrong bits,
  over the target's bit positions (as the reference's ``data_utils.accuracy``)."""
  bits = targets != binary_tasks.PAD
  wrong = (jnp.argmax(logits, -1) != targets) & bits
  return {"seq_error": jnp.any(wrong, 1).astype(jnp.float32),
          "bit_error": jnp.sum(wrong, 1) / jnp.maximum(jnp.sum(bits, 1), 1)}


def sample_bits(key: jax.Array, n: int, current: jax.Array, max_bits: int) -> jax.Array:
  """Operand lengths [n] in [1, max_bits] under the curriculum (see module doc)."""
  k = jax.random.split(key, 5)
  bits = jax.random.randint(k[0], (n,), 1, current + 1)
  longer = jnp.maximum(bits, jax.random.randint(k[1], (n,), 1, current + 1))
  bits = jnp.where(jax.random.bernoulli(k[2], PREFER_LONGER, (n,)), longer, bits)
  any_length = jnp.maximum(bits, jax.random.randint(k[3], (n,), 1, max_bits + 1))
  return jnp.where(jax.random.bernoulli(k[4], MIX_ALL, (n,)), any_length, bits)


def select_rows(batch: dict[str, jax.Array], bits: jax.Array) -> dict[str, jax.Array]:
  """Row ``bits - 1`` of each pool entry [B, max_bits, L] -> [B, L] (int32)."""
  index = (bits - 1)[:, None, None]
  return {k: jnp.take_along_axis(v, index, 1)[:, 0].astype(jnp.int32)
          for k, v in batch.items()}


def loss_fn(params: Params, batch: experiment.Batch, key: jax.Array, hp: experiment.HParams,
            config: ml_collections.ConfigDict) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Cross-entropy over the input positions + pull * relaxation distance."""
  sample_key, dropout_key = jax.random.split(key)
  bits = sample_bits(sample_key, batch["inputs"].shape[0], hp["bits"], config.data.train_bits)
  example = select_rows(batch, bits)
  logits = apply(params, example["inputs"], hp, config,
                 dropout_key if config.code_choices["dropout"] else None)
  mask = example["inputs"] != binary_tasks.PAD
  xent = optax.softmax_cross_entropy_with_integer_labels(logits, example["targets"])
  loss = jnp.sum(xent * mask) / jnp.sum(mask)
  loss += hp["pull"] * relaxation_distance(params["cgru"])
  err = errors(logits, example["targets"])
  current = bits <= hp["bits"]
  return loss, {
      "seq_error": jnp.mean(err["seq_error"]),
      "bit_error": jnp.mean(err["bit_error"]),
      "curriculum_errors": jnp.sum(err["seq_error"] * current),
      "curriculum_examples": jnp.sum(current).astype(jnp.float32),
  }


def eval_fn(params: Params, batch: experiment.Batch, hp: experiment.HParams,
            config: ml_collections.ConfigDict) -> dict[str, jax.Array]:
  """Per-example sequence and bit errors (see ``errors``)."""
  return errors(apply(params, batch["inputs"].astype(jnp.int32), hp, config),
                batch["targets"].astype(jnp.int32))


def init_state(key: jax.Array, batch: experiment.Batch, hp: experiment.HParams,
               config: experiment.GroupConfig) -> dict[str, jax.Array]:
  """Curriculum state of a run at step 0."""
  return {
      "bits": jnp.asarray(config.curriculum.start_bits, jnp.int32),
      "pull": jnp.asarray(hp["pull_start"], jnp.float32),
      "averaged": jnp.zeros([], bool),
      **curriculum.window_start("window_examples"),
  }


def after_step(extra: dict[str, jax.Array], aux: dict[str, jax.Array], hp: experiment.HParams,
               config: experiment.GroupConfig) -> dict[str, jax.Array]:
  """After a step: accumulate the window; at its end advance the curriculum on success."""
  success, window = curriculum.window_step(
      extra, aux["curriculum_errors"], aux["curriculum_examples"], "window_examples",
      config.curriculum.window, hp["curriculum_threshold"])
  saturated = extra["pull"] >= config.relax.pull_max
  return {
      "bits": jnp.where(success, jnp.minimum(extra["bits"] + 1, config.data.train_bits),
                        extra["bits"]),
      "pull": jnp.where(success & ~saturated, extra["pull"] * hp["pull_growth"],
                        extra["pull"]),
      "averaged": extra["averaged"] | (success & saturated),
      **window,
  }


def hparams(config: ml_collections.ConfigDict) -> dict[str, np.ndarray]:
  return {
      "init_scale": np.float32(config.model.init_scale),
      "dropout_rate": np.float32(config.model.dropout_rate),
      "pull_start": np.float32(config.relax.pull),
      "pull_growth": np.float32(config.relax.pull_growth),
      "curriculum_threshold": np.float32(config.curriculum.threshold),
  }


def load_data(config: ml_collections.ConfigDict) -> experiment.Dataset:
  data = config.data
  rng = np.random.default_rng(data.seed)
  inputs, targets = binary_tasks.training_pool(data.task, data.train_bits, data.pool_size, rng)
  test_inputs, test_targets = binary_tasks.examples(
      data.task, data.test_bits, data.test_examples,
      binary_tasks.sequence_length(data.test_bits), rng)
  return experiment.Dataset(
      train={"inputs": inputs, "targets": targets},
      evals={"test": {"inputs": test_inputs, "targets": test_targets}},
      description=(f"binary {data.task}: {data.pool_size} training entries x operands of "
                   f"1..{data.train_bits} bits; {data.test_examples} test examples of "
                   f"{data.test_bits} bits (seed {data.seed})"))


FIELDS = {
    "data.task": fields.choice(*binary_tasks.TASKS),
    "data.train_bits": fields.integer(1),
    "data.test_bits": fields.integer(1),
    "data.pool_size": fields.integer(1),
    "data.test_examples": fields.integer(1),
    "data.seed": fields.integer(0, 2**32 - 1),
    "model.maps": fields.integer(1),
    "model.width": fields.integer(1),
    "model.cgrus": fields.integer(1),
    "model.dropout_rate": fields.number(0, 1, high_open=True),
    "model.init_scale": fields.number(0, low_open=True),
    "model.remat": fields.flag(),
    "relax.copies": fields.integer(1),
    "relax.pull": fields.number(0),
    "relax.pull_growth": fields.number(1),
    "relax.pull_max": fields.number(0, low_open=True),
    "curriculum.start_bits": fields.integer(1),
    "curriculum.threshold": fields.number(0, 1, low_open=True),
    "curriculum.window": fields.integer(1),
}


def validate(config: ml_collections.ConfigDict) -> None:
  """Rules between fields (each field's own range is in FIELDS)."""
  if config.curriculum.start_bits > config.data.train_bits:
    raise UsageError(f"config field curriculum.start_bits={config.curriculum.start_bits!r} is "
                     f"invalid; accepted: at most data.train_bits={config.data.train_bits}.",
                     field="curriculum.start_bits")


EXPERIMENT = experiment.Experiment(
    name="neural_gpu",
    traced_fields=("model.init_scale", "model.dropout_rate", "relax.pull",
                   "relax.pull_growth", "curriculum.threshold"),
    fields=FIELDS,
    validate=validate,
    load_data=load_data,
    hparams=hparams,
    init_params=init_params,
    loss_fn=loss_fn,
    eval_fn=eval_fn,
    code_choices=lambda config: {"dropout": config.model.dropout_rate > 0},
    summary_metric="test_seq_error",
    curves=("train_loss", "train_seq_error", "test_seq_error", "state_bits"),
    state=experiment.RunStateHooks(init=init_state, after_step=after_step),
)
