"""Experiment 3 of Neelakantan et al. (2015): Neural Programmer on synthetic tables (Table 4).

The model of Neelakantan, Le and Sutskever (2016), "Neural Programmer: Inducing Latent
Programs with Gradient Descent", arXiv:1511.04834v3 (sec. 2; data in
experiments/table_qa.py). Plain JAX: a handful of weight matrices without biases (the
paper writes none), one example at a time under ``jax.vmap``.

Question module (sec. 2.1). Numbers are removed from the question and kept with the
index of the word to their left. A tanh RNN without bias, z_i = tanh(W_q [z_{i-1}; V w_i]),
z_0 = 0, gives q = z_Q; with ``model.bidirectional`` (the paper's 5- and 10-column
settings) a second RNN reads the words backwards and q = [z_Q; z'_1] (2d). The pivot
attention and text match read the forward states (the state at a number's left word
holds the words before it, the paper's "hidden vectors ... to the left of the numbers"),
a choice: the paper does not give the bidirectional shapes.

Pivots (sec. 2.2). Z [N, d] holds the forward states left of the N <= 2 numbers;
beta_op = softmax(Z U(op)) for op in {greater, lesser}, U(op) the operation's embedding
row. pivot_op = sum_k beta_op(k) qn_k; a question without numbers has pivot
``model.default_pivot`` (-1, the paper's Table 3).
Gradient (UNCONFIRMED, ``model.pivot_gradient``): greater/lesser as written, [x > pivot],
give beta no gradient. ``expected`` (default) uses the expected indicator
sum_k beta(k) [x > qn_k], differentiable in beta and equal to the written one under
hardmax; ``none`` keeps the written comparison (beta is then trained by nothing, and its
hardmax at test is whatever initialisation and the shared embedding U give).

Selector and history (sec. 2.3-2.4). At step t = 1..T (T = 4):
alpha_op = softmax(U tanh(W_op [q; h_t])), alpha_col = softmax(P tanh(W_col [q; h_t]))
over the table's columns, P[j] = V(letter j) (the column names' word embeddings, our
reading of "word embedding" for one-word names). h_1 = 0,
h_{t+1} = tanh(W_hist [alpha_op U; alpha_col P; h_t]).

Operations (Table 1) and updates (sec. 2.3), with rs = row_select, s = scalar_answer,
rs_0 = rs_{-1} = the table's rows and s_0 = s_{-1} = s_{-2} = 0 (UNCONFIRMED boundary):
  sum_t[j] = sum_i rs_{t-1}[i] x[i, j]; count_t = sum_i rs_{t-1}[i];
  diff_t = s_{t-3} - s_{t-1}; g[i, j] = [x[i, j] > pivot_g]; l[i, j] = [x[i, j] < pivot_l];
  and_t = min(rs_{t-1}, rs_{t-2}); or_t = max(rs_{t-1}, rs_{t-2}); reset_t = 1;
  s_t = a(count) count_t + a(diff) diff_t + a(sum) sum_j a_col(j) sum_t[j];
  lookup_t[i, j] = a_col(j) a(assign) rs_{t-1}[i];
  rs_t = a(and) and_t + a(or) or_t + a(reset) reset_t
         + sum_j a_col(j) (a(greater) g[:, j] + a(lesser) l[:, j] + a(text_match) tm[:, j]),
greater/lesser over numeric columns, text match over text columns. Text match
(sec. 2.3.1): A[m, k] = V(cell), B = sigmoid(A . q), D[k] = mean_m B A, E = D + P,
G[k] = softmax-attention of E[k] over the question states, tm[m, k] = sigmoid(A[m, k] . G[k])
(q: the forward RNN's). In training every selection is soft; at test operation, column
and pivot softmaxes are hardmax (sec. 2.6) and tm is thresholded at 1/2 (a choice: the
paper hardens only the softmaxes). What the history RNN reads at test is not stated
(UNCONFIRMED, ``model.test_history``): ``hard``, the hardmax choices (the literal reading)
or ``soft`` (default), the softmax probabilities, so that the test program is the argmax
of the very selections the model was trained with. The
difference matters: a step whose operation does not matter in training (its output is
overwritten, e.g. step 1 of ``sum``) stays undecided, and under ``hard`` its argmax
changes the history and with it every later choice (seen in our runs: soft loss 0 on
``sum`` questions while the hard program was sum, sum, sum, sum).

Answer (sec. 2.6). The output the last step updated: under hardmax, a scalar when the
step-T operation is sum, count or difference, a lookup when it is assign (any other
operation answers nothing: wrong). A scalar is correct to the first decimal
(|prediction - answer| < 0.05, Table 2 caption); a lookup when its cells equal the
answer's cells (UNCONFIRMED).

Loss (sec. 2.5): per example, Huber(|s_T - y|; delta) = a^2/2 for a <= delta, else
delta a - delta^2/2 for a scalar answer; lambda times the mean over the table's M x C
cells of the binary cross-entropy of lookup_T for a lookup answer (type known from the
data); mean over the batch. delta (``model.huber_delta``) and lambda
(``model.lookup_weight``) are traced, as the paper's grid.

Dropout (UNCONFIRMED: the noise paper gives neither place nor rates): on the selector
input [q; h_t] in training, rate ``model.dropout_rate`` (traced).

Not built: the 10-column setting's attention over the question at every step (Table 4
of the noise paper has no 10-column column).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from experiments import table_qa
from gradnoise import experiment, fields
from gradnoise.errors import UsageError
from gradnoise.flax_experiment import dropout

Params = dict[str, jax.Array]
Example = dict[str, jax.Array]
HParams = dict[str, jax.Array]

PIVOT_GRADIENTS = ("expected", "none")
TEST_HISTORIES = ("hard", "soft")
SCALAR_OPS = tuple(table_qa.OP[n] for n in ("sum", "count", "difference"))
SCALAR_TOLERANCE = 0.05  # correct to the first decimal place (paper, Table 2 caption)
LOG_FLOOR = 1e-7  # probabilities are clipped to [LOG_FLOOR, 1 - LOG_FLOOR] in the log-loss
NEG = -1e30  # softmax score of an absent column or number


def num_ops(text_columns: int) -> int:
  """O: the 9 operations of Table 1, plus text match with text columns (sec. 2.3.1)."""
  return table_qa.NUMERIC_OPS + (text_columns > 0)


def init_params(key: jax.Array, batch: Example, hp: HParams,
                config: experiment.GroupConfig) -> Params:
  """Weights uniform in [-init_scale, init_scale] (0.1 in the paper, sec. 3.2.1).

  Shapes (d = model.hidden, Q = 2d if bidirectional else d, O = :func:`num_ops`):
  V [vocabulary, d], W_q [d, 2d] (and W_qb), U [O, d], W_op and W_col [d, Q + d],
  W_hist [d, 3d].
  """
  d = config.model.hidden
  q = 2 * d if config.model.bidirectional else d
  shapes = {"V": (len(table_qa.VOCAB), d), "W_q": (d, 2 * d),
            "U": (num_ops(config.data.text_columns), d), "W_op": (d, q + d),
            "W_col": (d, q + d), "W_hist": (d, 3 * d)}
  if config.model.bidirectional:
    shapes["W_qb"] = (d, 2 * d)
  keys = jax.random.split(key, len(shapes))
  return {name: jax.random.uniform(k, shape, jnp.float32, -1.0, 1.0) * hp["init_scale"]
          for k, (name, shape) in zip(keys, sorted(shapes.items()))}


def rnn(w: jax.Array, embedded: jax.Array, mask: jax.Array) -> jax.Array:
  """States [L, d] of z_i = tanh(W [z_{i-1}; e_i]), z_0 = 0 (sec. 2.1) over embedded
  words [L, d]; a masked word (mask [L] False) leaves the state unchanged."""

  def step(z, inputs):
    e, m = inputs
    z = jnp.where(m, jnp.tanh(w @ jnp.concatenate([z, e])), z)
    return z, z

  _, states = jax.lax.scan(step, jnp.zeros(w.shape[0], embedded.dtype), (embedded, mask))
  return states


def question(params: Params, words: jax.Array,
             bidirectional: bool) -> tuple[jax.Array, jax.Array]:
  """(q [d or 2d], forward states [L, d]) for word ids [L] (0 = padding, at the end)."""
  mask = words > 0
  embedded = params["V"][words]
  states = rnn(params["W_q"], embedded, mask)
  length = jnp.maximum(jnp.sum(mask), 1)
  q = states[length - 1]
  if bidirectional:
    backward = rnn(params["W_qb"], embedded[::-1], mask[::-1])
    q = jnp.concatenate([q, backward[-1]])
  return q, states


def select(scores: jax.Array, mask: jax.Array, hard: bool) -> jax.Array:
  """Softmax (training) or one-hot argmax (test, sec. 2.6) of scores [K] over mask [K]."""
  scores = jnp.where(mask, scores, NEG)
  if hard:
    return jax.nn.one_hot(jnp.argmax(scores), scores.shape[0], dtype=scores.dtype)
  return jax.nn.softmax(scores)


def comparisons(params: Params, ex: Example, states: jax.Array, hard: bool,
                config: experiment.GroupConfig) -> tuple[jax.Array, jax.Array]:
  """(g, l) [M, C]: greater / lesser indicators of every cell (sec. 2.2, Table 1).

  Each pivot attends over the numbers with beta = softmax(Z U(op)); see the module
  docstring for ``model.pivot_gradient``. Cells outside the table are 0.
  """
  has = jnp.any(ex["number_mask"] > 0)
  mask = jnp.where(has, ex["number_mask"] > 0, jnp.arange(table_qa.MAX_NUMBERS) == 0)
  numbers = jnp.where(has, ex["numbers"], config.model.default_pivot)
  z = states[ex["number_left"]]
  values = ex["values"][..., None]  # [M, C, 1]
  out = []
  for name, compare in (("greater", jnp.greater), ("lesser", jnp.less)):
    beta = select(z @ params["U"][table_qa.OP[name]], mask, hard)
    if config.model.pivot_gradient == "expected":
      indicator = jnp.sum(compare(values, numbers) * beta, -1)
    else:
      indicator = compare(values[..., 0], jnp.sum(beta * numbers)).astype(values.dtype)
    out.append(indicator * cell_mask(ex, config))
  return out[0], out[1]


def row_mask(ex: Example) -> jax.Array:
  """[M] 1.0 on the table's rows."""
  return (jnp.arange(ex["values"].shape[0]) < ex["num_rows"]).astype(jnp.float32)


def column_mask(ex: Example) -> jax.Array:
  """[C] True on the table's columns."""
  return jnp.arange(ex["values"].shape[1]) < ex["num_columns"]


def cell_mask(ex: Example, config: experiment.GroupConfig) -> jax.Array:
  """[M, C] 1.0 on the numeric cells of the table."""
  numeric = jnp.arange(ex["values"].shape[1]) >= config.data.text_columns
  return row_mask(ex)[:, None] * (column_mask(ex) & numeric)


def text_match(params: Params, ex: Example, q: jax.Array, states: jax.Array, words: jax.Array,
               hard: bool, config: experiment.GroupConfig) -> jax.Array:
  """tm [M, C]: text match of every cell (sec. 2.3.1; 0 in numeric columns)."""
  k = config.data.text_columns
  rows = row_mask(ex)
  a = params["V"][ex["cells"][:, :k].astype(jnp.int32)]  # [M, K, d]
  b = jax.nn.sigmoid(a @ q)
  d = jnp.sum(rows[:, None, None] * b[..., None] * a, 0) / jnp.sum(rows)
  e = d + column_names(params, ex)[:k]
  attention = select_soft(e @ states.T, words > 0)  # [K, L]
  g = attention @ states
  tm = jax.nn.sigmoid(jnp.einsum("mkd,kd->mk", a, g))
  if hard:
    tm = (tm > 0.5).astype(tm.dtype)
  return jnp.pad(tm * rows[:, None], ((0, 0), (0, ex["values"].shape[1] - k)))


def select_soft(scores: jax.Array, mask: jax.Array) -> jax.Array:
  """Softmax over the last axis of scores [..., L] restricted to mask [L]."""
  return jax.nn.softmax(jnp.where(mask, scores, NEG), -1)


def column_names(params: Params, ex: Example) -> jax.Array:
  """P [C, d]: the word embeddings of the column letters A, B, ..."""
  letters = [table_qa.WORD_ID[c] for c in table_qa.LETTERS[:ex["values"].shape[1]]]
  return params["V"][jnp.array(letters)]


def selections(params: Params, q: jax.Array, names: jax.Array, columns: jax.Array,
               hp: HParams, config: experiment.GroupConfig, hard: bool,
               key: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
  """The selector and history RNN (sec. 2.3-2.4): (ops [T, O], columns [T, C]).

  The selections depend on the question and the history only, never on the table, so
  they are computed before the table is touched. Under ``hard`` the history RNN reads the
  hardmax choices or, with ``model.test_history`` = soft, the softmax ones (module
  docstring). Args: q [Q]; names (P) [C, d]; columns [C] mask of the table's columns;
  key: dropout on [q; h_t] in training, or None.
  """
  h = jnp.zeros(config.model.hidden, q.dtype)
  ops, cols = [], []
  for t in range(table_qa.T):
    x = jnp.concatenate([q, h])
    if key is not None:
      x = dropout(x, hp["dropout_rate"], jax.random.fold_in(key, t))
    op_scores = params["U"] @ jnp.tanh(params["W_op"] @ x)
    col_scores = names @ jnp.tanh(params["W_col"] @ x)
    a, c = select(op_scores, True, hard), select(col_scores, columns, hard)
    if hard and config.model.test_history == "soft":
      h_a, h_c = select(op_scores, True, False), select(col_scores, columns, False)
    else:
      h_a, h_c = a, c
    h = jnp.tanh(params["W_hist"] @ jnp.concatenate([h_a @ params["U"], h_c @ names, h]))
    ops.append(a)
    cols.append(c)
  return jnp.stack(ops), jnp.stack(cols)


def execute(ops: jax.Array, cols: jax.Array, values: jax.Array, rows: jax.Array,
            g: jax.Array, l: jax.Array, tm: jax.Array) -> tuple[jax.Array, jax.Array]:
  """The operations (Table 1) and output updates (sec. 2.3) of T steps.

  Args:
    ops [T, O], cols [T, C]: operation and column selections (soft or one-hot; O = 9
      without text match).
    values [M, C]: the table (0 outside it and in text columns).
    rows [M]: 1.0 on the table's rows (reset, rs_0 and rs_{-1}).
    g, l, tm [M, C]: greater, lesser and text-match indicators.

  Returns (scalar_answer_T, lookup_answer_T [M, C]).
  """
  op = table_qa.OP
  scalars = [jnp.zeros([], values.dtype)] * 3  # s_{t-3}, s_{t-2}, s_{t-1}
  prev2 = prev = rows  # rs_{t-2}, rs_{t-1}
  lookup = jnp.zeros_like(values)
  for a, c in zip(ops, cols):
    scalar = (a[op["count"]] * jnp.sum(prev) + a[op["difference"]] * (scalars[0] - scalars[2])
              + a[op["sum"]] * (c @ (prev @ values)))
    lookup = c[None, :] * a[op["assign"]] * prev[:, None]
    select_rows = (a[op["and"]] * jnp.minimum(prev, prev2)
                   + a[op["or"]] * jnp.maximum(prev, prev2) + a[op["reset"]] * rows
                   + (a[op["greater"]] * g + a[op["lesser"]] * l) @ c)
    if a.shape[0] > table_qa.NUMERIC_OPS:
      select_rows = select_rows + a[op["text_match"]] * (tm @ c)
    scalars = scalars[1:] + [scalar]
    prev2, prev = prev, select_rows
  return scalars[-1], lookup


def forward(params: Params, ex: Example, hp: HParams, config: experiment.GroupConfig,
            hard: bool, key: jax.Array | None = None) -> dict[str, jax.Array]:
  """One example through T steps (module docstring).

  Args:
    ex: one example of :func:`experiments.table_qa.generate` (no leading axis).
    hard: hardmax selection (test) instead of softmax (training).
    key: dropout key (training with dropout), or None.

  Returns scalar (s_T), lookup (lookup_T [M, C]), ops [T, O] and columns [T, C] (the
  selections of every step).
  """
  words = ex["words"]
  q, states = question(params, words, config.model.bidirectional)
  g, l = comparisons(params, ex, states, hard, config)
  names = column_names(params, ex)
  if config.data.text_columns:
    q_forward = states[jnp.maximum(jnp.sum(words > 0), 1) - 1]
    tm = text_match(params, ex, q_forward, states, words, hard, config)
  else:
    tm = jnp.zeros_like(g)
  ops, cols = selections(params, q, names, column_mask(ex), hp, config, hard, key)
  values = ex["values"] * cell_mask(ex, config)
  scalar, lookup = execute(ops, cols, values, row_mask(ex), g, l, tm)
  return {"scalar": scalar, "lookup": lookup, "ops": ops, "columns": cols}


def huber(error: jax.Array, delta: jax.Array) -> jax.Array:
  """Huber loss of a = |error|: a^2 / 2 for a <= delta, else delta a - delta^2 / 2 (sec. 2.5)."""
  a = jnp.abs(error)
  return jnp.where(a <= delta, 0.5 * a * a, delta * a - 0.5 * delta * delta)


def lookup_loss(lookup: jax.Array, ex: Example, config: experiment.GroupConfig) -> jax.Array:
  """Mean over the table's M x C cells of the binary cross-entropy of lookup [M, C] against
  the answer cells (sec. 2.5)."""
  cells = row_mask(ex)[:, None] * column_mask(ex)
  p = jnp.clip(lookup, LOG_FLOOR, 1.0 - LOG_FLOOR)
  y = ex["lookup"].astype(p.dtype)
  bce = -(y * jnp.log(p) + (1.0 - y) * jnp.log1p(-p))
  return jnp.sum(bce * cells) / jnp.sum(cells)


def example_loss(params: Params, ex: Example, key: jax.Array | None, hp: HParams,
                 config: experiment.GroupConfig) -> jax.Array:
  """[n] Huber(s_T - y) or lambda * lookup log-loss, by the example's answer type."""
  out = forward(params, ex, hp, config, hard=False, key=key)
  scalar = huber(out["scalar"] - ex["scalar"], hp["huber_delta"])
  lookup = hp["lookup_weight"] * lookup_loss(out["lookup"], ex, config)
  return jnp.where(ex["is_scalar"] > 0, scalar, lookup)


def loss_fn(params: Params, batch: Example, key: jax.Array, hp: HParams,
            config: experiment.GroupConfig) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Mean over the batch of :func:`example_loss` (soft selection, dropout if on)."""
  keys = (jax.random.split(key, batch["words"].shape[0])
          if config.code_choices["dropout"] else None)
  losses = jax.vmap(example_loss, in_axes=(None, 0, 0 if keys is not None else None,
                                           None, None))(params, batch, keys, hp, config)
  scalar = batch["is_scalar"] > 0
  return jnp.mean(losses), {
      "scalar_loss": jnp.sum(jnp.where(scalar, losses, 0.0)) / jnp.maximum(jnp.sum(scalar), 1),
      "lookup_loss": jnp.sum(jnp.where(scalar, 0.0, losses)) / jnp.maximum(jnp.sum(~scalar), 1),
  }


def correct(out: dict[str, jax.Array], ex: Example) -> jax.Array:
  """1.0 when a hardmax forward's answer is right (module docstring, "Answer")."""
  last = jnp.argmax(out["ops"][-1])
  is_scalar = ex["is_scalar"] > 0
  scalar_ok = jnp.isin(last, jnp.array(SCALAR_OPS)) & (
      jnp.abs(out["scalar"] - ex["scalar"]) < SCALAR_TOLERANCE)
  cells = (row_mask(ex)[:, None] > 0) & column_mask(ex)
  same = (out["lookup"] > 0.5) == (ex["lookup"] > 0)
  lookup_ok = (last == table_qa.OP["assign"]) & jnp.all(same | ~cells)
  return jnp.where(is_scalar, scalar_ok, lookup_ok).astype(jnp.float32)


def eval_fn(params: Params, batch: Example, hp: HParams,
            config: experiment.GroupConfig) -> dict[str, jax.Array]:
  """Per example [B]: accuracy (hardmax answer right) and loss (soft, no dropout)."""

  def one(ex):
    return correct(forward(params, ex, hp, config, hard=True), ex)

  return {"accuracy": jax.vmap(one)(batch),
          "loss": jax.vmap(example_loss, in_axes=(None, 0, None, None, None))(
              params, batch, None, hp, config)}


def table_specs(config: ml_collections.ConfigDict) -> tuple[table_qa.TableSpec,
                                                           table_qa.TableSpec]:
  """(training, test) table settings of the config (paper sec. 3.1). With text columns
  every training table has max_columns columns, as the paper's text experiment 1."""
  d = config.data
  common = dict(max_columns=d.max_columns, text_columns=d.text_columns,
                word_variability=d.word_variability, uniform_templates=d.uniform_templates,
                decimals=d.decimals, templates=tuple(d.templates or ()), pivots=d.pivots)
  train = table_qa.TableSpec(min_rows=d.min_rows, max_rows=d.max_rows, value_range=d.train_range,
                             fixed_columns=d.text_columns > 0, **common)
  test = table_qa.TableSpec(min_rows=d.test_rows, max_rows=d.test_rows,
                            value_range=d.test_range, fixed_columns=True, **common)
  return train, test


@functools.lru_cache(maxsize=2)
def _load(train: table_qa.TableSpec, test: table_qa.TableSpec, train_size: int,
          seed: int) -> experiment.Dataset:
  rng = np.random.default_rng(seed)
  length = table_qa.max_words(train)
  train_arrays = table_qa.generate(train, train_size, rng, length)
  test_arrays = table_qa.generate(test, None, rng, length)
  n_test = len(test_arrays["words"])
  return experiment.Dataset(
      train=train_arrays, evals={"test": test_arrays},
      description=(f"synthetic tables, {train.max_columns} columns ({train.text_columns} "
                   f"text){', word variability' if train.word_variability else ''}: "
                   f"{train_size} training triples ({train.min_rows}-{train.max_rows} rows, "
                   f"[-{train.value_range:g}, {train.value_range:g}]), {n_test} test "
                   f"questions, one per template ({test.max_rows} rows, "
                   f"[-{test.value_range:g}, {test.value_range:g}]), seed {seed}"))


def load_data(config: ml_collections.ConfigDict) -> experiment.Dataset:
  train, test = table_specs(config)
  return _load(train, test, config.data.train_size, config.data.seed)


def hparams(config: ml_collections.ConfigDict) -> dict[str, float]:
  m = config.model
  return {"huber_delta": m.huber_delta, "lookup_weight": m.lookup_weight,
          "init_scale": m.init_scale, "dropout_rate": m.dropout_rate}


FIELDS = {
    "model.hidden": fields.integer(1),
    "model.bidirectional": fields.flag(),
    "model.pivot_gradient": fields.choice(*PIVOT_GRADIENTS),
    "model.test_history": fields.choice(*TEST_HISTORIES),
    "model.default_pivot": fields.number(),
    "model.init_scale": fields.number(0, low_open=True),
    "model.dropout_rate": fields.number(0, 1, high_open=True),
    "model.huber_delta": fields.number(0, low_open=True),
    "model.lookup_weight": fields.number(0),
    "data.max_columns": fields.integer(1, table_qa.MAX_COLUMNS),
    "data.text_columns": fields.integer(0, table_qa.MAX_COLUMNS - 1),
    "data.word_variability": fields.flag(),
    "data.uniform_templates": fields.flag(),
    "data.train_size": fields.integer(1),
    "data.seed": fields.integer(0, 2**32 - 1),
    "data.decimals": fields.integer(0, 6),
    "data.train_range": fields.number(0, low_open=True),
    "data.test_range": fields.number(0, low_open=True),
    "data.min_rows": fields.integer(1),
    "data.max_rows": fields.integer(1),
    "data.test_rows": fields.integer(1),
    "data.templates": fields.optional(fields.integers(0), "every template"),
    # Absent from configs written before it existed: their data as drawn then.
    "data.pivots": fields.choice(*table_qa.PIVOT_DRAWS, default="independent"),
}


def validate(config: ml_collections.ConfigDict) -> None:
  """Rules between fields (each field's own range is in FIELDS)."""
  d = config.data
  if d.text_columns >= d.max_columns:
    raise UsageError(f"config field data.text_columns={d.text_columns!r} is invalid; "
                     f"accepted: less than data.max_columns={d.max_columns}.",
                     field="data.text_columns")
  if d.min_rows > d.max_rows:
    raise UsageError(f"config field data.min_rows={d.min_rows!r} is invalid; accepted: at "
                     f"most data.max_rows={d.max_rows}.", field="data.min_rows")
  count = len(table_qa.spec_templates(table_specs(config)[0], d.max_columns))
  if d.templates and max(d.templates) >= count:
    raise UsageError(f"config field data.templates={tuple(d.templates)!r} is invalid; "
                     f"accepted: template indices below {count}.", field="data.templates")


EXPERIMENT = experiment.Experiment(
    name="neural_programmer",
    traced_fields=("model.huber_delta", "model.lookup_weight", "model.init_scale",
                   "model.dropout_rate"),
    fields=FIELDS,
    validate=validate,
    load_data=load_data,
    hparams=hparams,
    init_params=init_params,
    loss_fn=loss_fn,
    eval_fn=eval_fn,
    code_choices=lambda config: {"dropout": config.model.dropout_rate > 0},
    summary_metric="test_accuracy",
)
