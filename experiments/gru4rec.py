"""GRU4Rec (Hidasi, Karatzoglou, Baltrunas, Tikk 2015, "Session-based Recommendations with
Recurrent Neural Networks", arXiv:1511.06939) with gradient noise.

A flax (linen) model trained on session-parallel mini-batches (sec. 3.1.1) with sampled
ranking losses (sec. 3.1.2-3.1.3), evaluated as the paper (sec. 4): every click of a test
session but the first, the next item ranked against all training items, Recall@20 and
MRR@20 (ties: ``eval.ties``, see :mod:`experiments.rec_baselines`).

* Input: the one-hot item (``model.embedding=0``, the paper: one row of the input matrix
  per item) or an item embedding of that size (the paper's slightly worse variant).
* One GRU layer (sec. 3.1): z = sigma(W_z x + U_z h), r = sigma(W_r x + U_r h),
  h~ = tanh(W x + U (r * h)), h' = (1 - z) h + z h~, with gate biases (official code).
  Weights uniform in +-sqrt(6 / (rows + cols)) per gate matrix, biases 0 (official code).
* Scores for the B in-batch target items only (sec. 3.1.2: the other examples' targets are
  the negatives): r_ij = act(h_i . W_y[t_j] + b_y[t_j]), a B x B matrix, diagonal =
  positives (an item that is the target of two slots is a negative of both, as the
  official code); ``model.final_act`` tanh (the paper, for BPR and TOP1) or linear (for
  cross-entropy, whose softmax is the loss's). Dropout (rate ``model.dropout``) on the GRU
  output used for the scores; the carried hidden state is the undropped one.
* Losses (sec. 3.1.3, official code: means over all B columns, diagonal included):
  BPR = -mean_j log sigma(r_ii - r_ij); TOP1 = mean_j [sigma(r_ij - r_ii) + sigma(r_ij^2)]
  - sigma(r_ii^2) / B; xe = -log softmax(r_i.)_i. Each is averaged over the batch rows.
* Hidden state: one [B, H] array per run, carried between steps as extra run state
  (``RunStateHooks``; gradients do not flow through it: one-step truncated BPTT, as the
  official code) and zeroed in each slot where a new session starts. Training examples
  are laid out by ``load_data`` in session-parallel order (step after step, slot after
  slot; sessions by start time, the same order every epoch, every slot reset at an epoch's
  first step) and ``batch_order`` takes them in that order, so the schedule is
  data, not code, and every run of a compile group (seeds, noise, learning rate, dropout)
  shares one program. ``batch_size`` is the number of slots and must equal
  ``data.sessions_per_batch`` (the data are shared by runs with equal ``data.*`` fields).
* Optimiser: the trainer's ``optimizer.name`` (``adagrad``, the paper) with
  ``optimizer.momentum`` (Table 2's momentum) and ``optimizer.eps``. Noise is the trainer's
  (clip -> noise -> optimizer).

Table with the baselines: ``python -m experiments.gru4rec WORKDIR`` (:func:`table`).
"""

from __future__ import annotations

import csv
import functools
import json
import os
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from experiments import rec_baselines, session_data
from gradnoise import experiment, fields
from gradnoise.errors import UsageError
from gradnoise.flax_experiment import dropout

Batch = dict[str, jax.Array]
HParams = dict[str, jax.Array]
LOSSES = ("top1", "bpr", "xe")
FINAL_ACTS = ("tanh", "linear")


def _gate_uniform(rows: int, cols: int) -> nn.initializers.Initializer:
  """Uniform in +-sqrt(6 / (rows + cols)), the official code's init of a [rows, cols]
  matrix; a [rows, 3 cols] matrix of three gate matrices gets each one's scale."""
  scale = np.sqrt(6.0 / (rows + cols))
  return lambda key, shape, dtype=jnp.float32: jax.random.uniform(
      key, shape, dtype, -scale, scale)


class GRU4Rec(nn.Module):
  """One GRU layer over items and an output item table (module docstring).

  Attributes:
    num_items: training items (input one-hot size and output rows).
    hidden: GRU units H.
    embedding: 0 = one-hot input (the paper), else the size of an item embedding.
  """

  num_items: int
  hidden: int
  embedding: int = 0

  def setup(self):
    h = self.hidden
    rows = self.embedding or self.num_items
    if self.embedding:
      self.embed = self.param("embed", _gate_uniform(self.num_items, self.embedding),
                              (self.num_items, self.embedding))
    self.w_x = self.param("w_x", _gate_uniform(rows, h), (rows, 3 * h))
    self.w_h = self.param("w_h", _gate_uniform(h, h), (h, 3 * h))
    self.b_x = self.param("b_x", nn.initializers.zeros, (3 * h,))
    self.w_y = self.param("w_y", _gate_uniform(self.num_items, h), (self.num_items, h))
    self.b_y = self.param("b_y", nn.initializers.zeros, (self.num_items,))

  def step(self, h: jax.Array, items: jax.Array) -> jax.Array:
    """The next hidden state [B, H] from h [B, H] and the clicked items [B] (int)."""
    x = self.embed[items] @ self.w_x if self.embedding else self.w_x[items]
    x = x + self.b_x
    x_z, x_r, x_h = jnp.split(x, 3, -1)
    u_z, u_r, u_h = jnp.split(self.w_h, 3, -1)
    z = jax.nn.sigmoid(x_z + h @ u_z)
    r = jax.nn.sigmoid(x_r + h @ u_r)
    candidate = jnp.tanh(x_h + (r * h) @ u_h)
    return (1 - z) * h + z * candidate

  def scores(self, h: jax.Array, items: jax.Array) -> jax.Array:
    """Logits of ``items`` [C] for each state h [B, H]: [B, C]."""
    return h @ self.w_y[items].T + self.b_y[items]

  def all_scores(self, h: jax.Array) -> jax.Array:
    """Logits of every item [B, num_items]."""
    return h @ self.w_y.T + self.b_y

  def __call__(self, h: jax.Array, items: jax.Array) -> jax.Array:
    return self.scores(self.step(h, items), items)


def bpr(r: jax.Array) -> jax.Array:
  """BPR over a B x B score matrix (diagonal = positives): mean over rows and all columns
  of -log sigma(r_ii - r_ij) (the j = i term is the constant log 2)."""
  return -jnp.mean(jax.nn.log_sigmoid(jnp.diag(r)[:, None] - r))


def top1(r: jax.Array) -> jax.Array:
  """TOP1 over a B x B score matrix: mean over rows of mean_j [sigma(r_ij - r_ii) +
  sigma(r_ij^2)] - sigma(r_ii^2) / B (the positive's own regulariser removed)."""
  diag = jnp.diag(r)
  per_row = jnp.mean(jax.nn.sigmoid(r - diag[:, None]) + jax.nn.sigmoid(r ** 2), 1)
  return jnp.mean(per_row - jax.nn.sigmoid(diag ** 2) / r.shape[0])


def cross_entropy(r: jax.Array) -> jax.Array:
  """Softmax cross-entropy over the B in-batch items, the target on the diagonal."""
  return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(
      r, jnp.arange(r.shape[0])))


LOSS_FNS = {"bpr": bpr, "top1": top1, "xe": cross_entropy}


@functools.lru_cache(maxsize=1)
def _load(path: str, fmt: str, test_days: float, min_item_support: int,
          sessions_per_batch: int) -> tuple[session_data.Split, dict[str, np.ndarray]]:
  """The split and the session-parallel training layout of a data config."""
  split = session_data.split(session_data.read_events(path, fmt), test_days,
                             min_item_support, path)
  if split.train.num_sessions < sessions_per_batch:
    raise UsageError(f"config field data.sessions_per_batch={sessions_per_batch} is larger "
                     f"than the {split.train.num_sessions} training sessions of {path}; "
                     f"accepted: at most {split.train.num_sessions}.",
                     field="data.sessions_per_batch")
  inputs, reset = session_data.session_parallel(split.train.offsets, sessions_per_batch)
  items = split.train.items
  layout = {"item": items[inputs].ravel(), "target": items[inputs + 1].ravel(),
            "reset": reset.ravel()}
  return split, layout


def _data(config: ml_collections.ConfigDict):
  d = config.data
  return _load(d.path, d.format, float(d.test_days), d.min_item_support, d.sessions_per_batch)


def load_data(config: ml_collections.ConfigDict) -> experiment.Dataset:
  """Training clicks in session-parallel order; test evaluation points (prefix, target)."""
  split, layout = _data(config)
  prefix, target = session_data.prefixes(split.test)
  steps = len(layout["item"]) // config.data.sessions_per_batch
  return experiment.Dataset(
      train=layout, evals={"test": {"prefix": prefix, "target": target}},
      description=(f"{split.description}; {steps} session-parallel steps of "
                   f"{config.data.sessions_per_batch}; {len(target)} test events"))


def in_order(hp: HParams, epoch: jax.Array, num_train: int, steps: int,
             batch_size: int) -> jax.Array:
  """Example indices [steps, batch_size]: the layout of ``load_data``, the same each epoch."""
  return jnp.arange(steps * batch_size).reshape(steps, batch_size)


def _model(config) -> GRU4Rec:
  split, _ = _data(config)
  return GRU4Rec(split.num_items, config.model.hidden, config.model.embedding)


def init_params(key: jax.Array, batch: Batch, hp: HParams, config) -> dict:
  h = jnp.zeros((batch["item"].shape[0], config.model.hidden))
  return _model(config).init(key, h, batch["item"])["params"]


def init_state(key: jax.Array, batch: Batch, hp: HParams, config) -> dict[str, jax.Array]:
  """The slots' hidden states [B, H], zero (every slot's first step resets anyway)."""
  return {"hidden": jnp.zeros((batch["item"].shape[0], config.model.hidden))}


def _activate(logits: jax.Array, config) -> jax.Array:
  return jnp.tanh(logits) if config.model.final_act == "tanh" else logits


def loss_fn(params: dict, batch: Batch, key: jax.Array, hp: HParams,
            config) -> tuple[jax.Array, dict]:
  """The ranking loss of one session-parallel step; the new hidden state in aux."""
  model = _model(config)
  variables = {"params": params}
  h = jnp.where(batch["reset"][:, None], 0.0, hp["hidden"])
  h = model.apply(variables, h, batch["item"], method=GRU4Rec.step)
  out = dropout(h, hp["dropout"], key)
  logits = model.apply(variables, out, batch["target"], method=GRU4Rec.scores)
  loss = LOSS_FNS[config.model.loss](_activate(logits, config))
  return loss, {experiment.STATE_KEY: {"hidden": h}}


def eval_fn(params: dict, batch: Batch, hp: HParams, config) -> dict[str, jax.Array]:
  """Recall@20 and MRR@20 [B] of each evaluation point: the GRU run over its prefix
  [B, L] (padding -1 leaves the state as is), all items ranked by their logits (act is
  monotone; logits avoid ties made by a saturated tanh)."""
  model = _model(config)
  variables = {"params": params}
  prefix = batch["prefix"]

  def feed(h, items):
    new = model.apply(variables, h, jnp.maximum(items, 0), method=GRU4Rec.step)
    return jnp.where(items[:, None] >= 0, new, h), None

  h0 = jnp.zeros((prefix.shape[0], config.model.hidden))
  h, _ = jax.lax.scan(feed, h0, prefix.T)
  scores = model.apply(variables, h, method=GRU4Rec.all_scores)
  ranks = rec_baselines.target_ranks(scores, batch["target"], config.eval.ties)
  return rec_baselines.recall_mrr(ranks)


def hparams(config: ml_collections.ConfigDict) -> dict[str, float]:
  return {"dropout": config.model.dropout}


FIELDS = {
    "model.loss": fields.choice(*LOSSES),
    "model.final_act": fields.choice(*FINAL_ACTS),
    "model.hidden": fields.integer(1),
    "model.embedding": fields.integer(0),
    "model.dropout": fields.number(0, 1, high_open=True),
    "data.path": fields.text(description="an RSC15 yoochoose-clicks.dat or a Diginetica "
                             "train-item-views.csv"),
    "data.format": fields.choice(*session_data.FORMATS),
    "data.test_days": fields.number(0, low_open=True),
    "data.min_item_support": fields.integer(1),
    "data.sessions_per_batch": fields.integer(1),
    "eval.ties": fields.choice(*rec_baselines.TIES),
}


def validate(config: ml_collections.ConfigDict) -> None:
  """batch_size (the trainer's) must equal data.sessions_per_batch (the layout's)."""
  if config.batch_size != config.data.sessions_per_batch:
    raise UsageError(f"config field batch_size={config.batch_size} differs from "
                     f"data.sessions_per_batch={config.data.sessions_per_batch}; accepted: "
                     "equal values (the session-parallel layout of the data is built for "
                     "data.sessions_per_batch slots).", field="batch_size")


EXPERIMENT = experiment.Experiment(
    name="gru4rec",
    traced_fields=("model.dropout",),
    fields=FIELDS,
    validate=validate,
    load_data=load_data,
    hparams=hparams,
    init_params=init_params,
    loss_fn=loss_fn,
    eval_fn=eval_fn,
    summary_metric="test_recall20",
    state=experiment.RunStateHooks(init=init_state),
    batch_order=in_order,
)


def _run_key(row: dict[str, str], config: ml_collections.ConfigDict) -> tuple[str, float, str]:
  """(loss, eta, seed) of a results.csv row; fields the sweep did not set come from
  ``config``."""
  loss = row.get("model.loss") or config.model.loss
  eta = float(row.get("noise.eta") or config.noise.eta)
  return loss, eta, row.get("seed") or str(config.seed)


def _baseline_lines(config: ml_collections.ConfigDict) -> list[str]:
  split, _ = _data(config)
  prefix, target = session_data.prefixes(split.test)
  lines = []
  for name in rec_baselines.BASELINES:
    result = rec_baselines.evaluate(name, split.train, split.num_items, prefix, target,
                                    config.eval.ties)
    lines.append(f"| {name} | | | | {result['recall20']:.4f} | {result['mrr20']:.4f} | | |")
  return lines


def _gru4rec_lines(rows: list[dict[str, str]], config: ml_collections.ConfigDict) -> list[str]:
  by_key = {_run_key(row, config): row for row in rows}
  if len(by_key) < len(rows):
    raise UsageError("results.csv has several runs with the same loss, noise.eta and seed; "
                     "the table expects a sweep over model.loss x noise.eta x seed.")
  order = lambda key: (LOSSES.index(key[0]), key[1])
  lines = []
  for loss, eta in dict.fromkeys(key[:2] for key in sorted(by_key, key=order)):
    runs = {seed: row for (l, e, seed), row in by_key.items() if (l, e) == (loss, eta)}
    recall = np.array([float(r["test_recall20"]) for r in runs.values()])
    mrr = np.array([float(r["test_mrr20"]) for r in runs.values()])
    paired = [float(row["test_recall20"]) - float(by_key[(loss, 0.0, seed)]["test_recall20"])
              for seed, row in runs.items() if (loss, 0.0, seed) in by_key]
    change = f"{np.mean(paired):+.4f}" if paired and eta else ""
    diverged = sum(r["diverged"] in ("True", "true", "1") for r in runs.values())
    lines.append(f"| GRU4Rec | {loss} | {eta:g} | {len(runs)} | {recall.mean():.4f} ± "
                 f"{recall.std():.4f} | {mrr.mean():.4f} ± {mrr.std():.4f} | {change} | "
                 f"{diverged} |")
  return lines


def table(workdir: str) -> str:
  """Markdown: POP, S-POP and Item-KNN on the work dir's split, then per loss and noise eta
  GRU4Rec's final test Recall@20 and MRR@20 (mean ± standard deviation over seeds), and
  the change of Recall@20 against eta = 0 paired by seed (same init and batches)."""
  with open(os.path.join(workdir, "config.json")) as f:
    config = ml_collections.ConfigDict(json.load(f)["config"])
  with open(os.path.join(workdir, "results.csv")) as f:
    rows = list(csv.DictReader(f))
  header = ["| model | loss | eta | runs | Recall@20 | MRR@20 | Recall@20 vs eta 0 | "
            "diverged |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]
  split, _ = _data(config)
  return "\n".join([f"{split.description}; ties {config.eval.ties}; ± = std over seeds",
                    "", *header, *_baseline_lines(config), *_gru4rec_lines(rows, config)])


if __name__ == "__main__":
  if len(sys.argv) != 2:
    sys.exit("usage: python -m experiments.gru4rec WORKDIR  (a gru4rec work dir)")
  print(table(sys.argv[1]))
