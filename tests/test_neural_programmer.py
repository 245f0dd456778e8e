"""Neural Programmer (Table 4): table-QA generator, template programs, operations, hardmax
execution, loss, and learning the single-column task."""


import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import neural_programmer as configs
from experiments import neural_programmer as npg
from experiments import neural_programmer_table as npt
from experiments import table_qa as tq
from gradnoise import fields, sweep, trainer
from gradnoise.errors import UsageError

OP = tq.OP
TRAIN_EPOCHS = 20  # x 40 steps of batch 50 = 800 steps (all 3 seeds at 100% by ~500)


def gc(config):
  """The config as the compiled program's functions see it."""
  return trainer.group_config(config, npg.EXPERIMENT)


def tiny_config(**overrides):
  config = sweep.apply_overrides(configs.get_config("small"),
                                 {"model.hidden": 16, "data.train_size": 100})
  return sweep.apply_overrides(config, overrides)


def one_hot(names, size):
  return jnp.array([np.eye(size)[OP[n]] for n in names], jnp.float32)


# A 5-row table: column A numeric, B numeric, C text (word indices).
VALUES = np.array([[1.5, -3.0, 0.0], [-2.0, 7.25, 0.0], [3.0, 1.0, 0.0], [10.0, -8.0, 0.0],
                   [-0.5, 4.0, 0.0]])
WORDS = np.array([[-1, -1, 2], [-1, -1, 0], [-1, -1, 2], [-1, -1, 5], [-1, -1, 2]])


def test_template_counts_match_the_paper():
  assert [len(tq.templates(c)) for c in (1, 3, 5)] == [23, 307, 1231]  # Table 2
  assert [tq.template_count(c) for c in (1, 3, 5)] == [23, 307, 1231]
  assert len(tq.templates(1, word_variability=True)) == 1368  # Table 2, word variability
  assert len(tq.templates(10)) == tq.template_count(10) == 8861
  categories = [t.category for t in tq.templates(1)]
  assert [categories.count(c) for c in tq.CATEGORIES] == [3, 6, 12, 2, 0]  # Table 4
  assert all(len(t.program) == tq.T for t in tq.templates(3))
  with pytest.raises(ValueError, match="num_columns"):
    tq.templates(11)


def test_generator_ranges_row_and_column_counts():
  spec = tq.TableSpec(max_columns=3)
  data = tq.generate(spec, 400, np.random.default_rng(0))
  rows, cols = data["num_rows"], data["num_columns"]
  assert rows.min() >= 30 and rows.max() <= 100 and len(set(rows)) > 30
  assert set(cols) == {1, 2, 3}
  assert data["values"].shape == (400, 100, 3)
  inside = (np.arange(100)[None, :, None] < rows[:, None, None]) & (
      np.arange(3)[None, None, :] < cols[:, None, None])
  assert np.abs(data["values"][inside]).max() <= 100 and np.abs(data["values"]).max() > 95
  assert np.all(data["values"][~inside] == 0)
  assert np.allclose(data["values"], np.round(data["values"], 2))  # two decimals
  # Category first, then template (Table 4 caption): logic templates are not 12x as common.
  category = np.array([tq.spec_templates(spec, 3)[i].category for i in data["template"]])
  counts = [np.sum(category == c) for c in tq.CATEGORIES[:4]]
  assert min(counts) > 60, counts
  test = tq.TableSpec(max_columns=3, min_rows=120, max_rows=120, value_range=200.0,
                      fixed_columns=True)
  held_out = tq.generate(test, None, np.random.default_rng(1))
  assert len(held_out["words"]) == 307 and sorted(held_out["template"]) == list(range(307))
  assert set(held_out["num_rows"]) == {120} and set(held_out["num_columns"]) == {3}
  assert 150 < np.abs(held_out["values"]).max() <= 200


@pytest.mark.parametrize("words, numbers, ordered", [
    ("greater <n> A and lesser <n> A sum A", (50.0, -20.0), (-20.0, 50.0)),
    ("lesser <n> A and greater <n> A count", (-20.0, 50.0), (50.0, -20.0)),
    ("greater <n> A or lesser <n> A print A", (-20.0, 50.0), (50.0, -20.0)),
    ("lesser <n> B or greater <n> B sum A", (50.0, -20.0), (-20.0, 50.0)),
    ("greater <n> A and lesser <n> A count", (-20.0, 50.0), (-20.0, 50.0)),  # already so
    ("greater <n> A and lesser <n> B count", (50.0, -20.0), (50.0, -20.0)),  # two columns
    ("greater <n> C sum A", (50.0,), (50.0,)),
])
def test_ordered_pivots_make_logic_questions_non_trivial(words, numbers, ordered):
  template = _template(words)
  got = tq.order_pivots(template, np.array(numbers))
  np.testing.assert_array_equal(got, ordered)
  if template.program[0][1] == template.program[1][1] and len(numbers) == 2:
    # and: a non-empty range of the column; or: not every row.
    values = np.repeat(np.linspace(-100, 100, 201)[:, None], 3, axis=1)
    table = tq.Table(values, np.full(values.shape, -1), 0)
    _, _, selected = tq.execute(template.program[:3], table, tuple(got))
    assert 0 < np.count_nonzero(selected) < len(values)


def test_ordered_pivots_in_generated_single_column_data():
  """With pivots='ordered' no single-column and-question asks for an empty range and no
  or-question for the whole column; independently drawn, about half do."""
  def trivial(pivots):
    spec = tq.TableSpec(pivots=pivots)
    data = tq.generate(spec, 600, np.random.default_rng(0))
    programs = [tq.spec_templates(spec, 1)[i].program for i in data["template"]]
    out = []
    for program, numbers, mask in zip(programs, data["numbers"], data["number_mask"]):
      if program[2][0] not in (OP["and"], OP["or"]):
        continue
      pivot = dict(zip((program[0][0], program[1][0]), numbers[mask > 0]))
      overlap = pivot[OP["greater"]] < pivot[OP["lesser"]]
      out.append(overlap != (program[2][0] == OP["and"]))
    return np.mean(out), len(out)
  fraction, count = trivial("ordered")
  assert fraction == 0 and count > 100
  fraction, count = trivial("independent")
  assert 0.4 < fraction < 0.6 and count > 100
  with pytest.raises(ValueError, match="accepted: independent, ordered"):
    tq.TableSpec(pivots="orderd")


def test_question_encoding_keeps_numbers_with_their_left_word():
  spec = tq.TableSpec(max_columns=3, templates=(100,))
  template = tq.spec_templates(spec, 3)[100]
  data = tq.generate(spec, 1, np.random.default_rng(0))
  words = [tq.VOCAB[i] for i in data["words"][0] if i]
  assert words == [w for w in template.words if w != tq.NUMBER]
  assert template.words.count(tq.NUMBER) == 2
  left = [template.words[i - 1] for i, w in enumerate(template.words) if w == tq.NUMBER]
  assert [words[i] for i in data["number_left"][0]] == left
  assert list(data["number_mask"][0]) == [1.0, 1.0]


def _template(words):
  return next(t for t in tq.templates(3) if " ".join(t.words) == words)


@pytest.mark.parametrize("words, numbers, scalar", [
    ("sum A", (), 12.0),
    ("count", (), 5.0),
    ("greater <n> A sum B", (1.0,), -3.0 + 1.0 - 8.0),
    ("lesser <n> B count", (2.0,), 3.0),
    ("greater <n> A and lesser <n> B sum A", (0.0, 5.0), 1.5 + 3.0 + 10.0),
    ("lesser <n> A or greater <n> B sum B", (0.0, 5.0), 7.25 + 4.0),
    ("sum A diff count", (), 12.0 - 5.0),
    ("count diff sum B", (), 5.0 - 1.25),
])
def test_template_answers_match_hand_computed(words, numbers, scalar):
  table = tq.Table(VALUES[:, :2], WORDS[:, :2], 0)
  got, lookup, _ = tq.execute(_template(words).program, table, numbers)
  assert got == pytest.approx(scalar)
  assert not lookup.any()


def test_print_and_text_answers_match_hand_computed():
  table = tq.Table(VALUES[:, :2], WORDS[:, :2], 0)
  _, lookup, _ = tq.execute(_template("greater <n> A and lesser <n> B print B").program,
                            table, (0.0, 5.0))
  assert np.array_equal(lookup, [[False, True], [False, False], [False, True],
                                 [False, True], [False, False]])
  text = tq.Table(VALUES[:, [2, 0]], WORDS[:, [2, 0]], 1)
  template = next(t for t in tq.templates(2, 1) if t.words == ("word:2", "A", "sum", "B"))
  assert tq.execute(template.program, text, (), (2,))[0] == pytest.approx(1.5 + 3.0 - 0.5)


def _model_inputs(pivot_g, pivot_l, word=2):
  values = jnp.asarray(VALUES, jnp.float32)
  g = (values > pivot_g).astype(jnp.float32).at[:, 2].set(0.0)
  l = (values < pivot_l).astype(jnp.float32).at[:, 2].set(0.0)
  tm = jnp.zeros_like(values).at[:, 2].set(jnp.asarray(WORDS[:, 2] == word, jnp.float32))
  return values.at[:, 2].set(0.0), jnp.ones(5), g, l, tm


def test_every_operation_matches_numpy_execution():
  """Hardmax programs through the model's update equations against table_qa.execute."""
  pivot_g, pivot_l = 0.7, 2.5
  values, rows, g, l, tm = _model_inputs(pivot_g, pivot_l)
  table = tq.Table(VALUES, WORDS, 1)
  execute = jax.jit(npg.execute)
  rng = np.random.default_rng(0)
  programs = [tuple(rng.integers(len(tq.OPS), size=tq.T)) for _ in range(150)]
  programs += [(OP["reset"],) * 3 + (o,) for o in range(len(tq.OPS))]
  for program in programs:
    columns = [int(rng.integers(0, 2)) if tq.OPS[o] != "text_match" else 2 for o in program]
    steps = list(zip(program, columns))
    numbers = [pivot_g if tq.OPS[o] == "greater" else pivot_l for o in program
               if tq.OPS[o] in ("greater", "lesser")]
    texts = [2 for o in program if tq.OPS[o] == "text_match"]
    scalar, lookup, _ = tq.execute(steps, table, numbers, texts)
    ops = jnp.asarray(np.eye(len(tq.OPS))[list(program)], jnp.float32)
    cols = jnp.asarray(np.eye(3)[columns], jnp.float32)
    got_scalar, got_lookup = execute(ops, cols, values, rows, g, l, tm)
    assert float(got_scalar) == pytest.approx(scalar, abs=1e-4), steps
    assert np.array_equal(np.asarray(got_lookup) > 0.5, lookup), steps


def test_soft_updates_match_numpy_formulas():
  """Soft selections: the sec. 2.3 update equations written out in numpy."""
  values, rows, g, l, tm = (np.asarray(x, np.float64) for x in _model_inputs(0.7, 2.5))
  rng = np.random.default_rng(1)
  ops = rng.dirichlet(np.ones(len(tq.OPS)), tq.T)
  cols = rng.dirichlet(np.ones(3), tq.T)
  s, rs = [0.0, 0.0, 0.0], [rows, rows]
  for a, c in zip(ops, cols):
    prev, prev2 = rs[-1], rs[-2]
    scalar = (a[OP["count"]] * prev.sum() + a[OP["difference"]] * (s[-3] - s[-1])
              + a[OP["sum"]] * sum(c[j] * (prev * values[:, j]).sum() for j in range(3)))
    lookup = np.outer(prev, c) * a[OP["assign"]]
    rs.append(a[OP["and"]] * np.minimum(prev, prev2) + a[OP["or"]] * np.maximum(prev, prev2)
              + a[OP["reset"]] * rows
              + sum(c[j] * (a[OP["greater"]] * g[:, j] + a[OP["lesser"]] * l[:, j]
                            + a[OP["text_match"]] * tm[:, j]) for j in range(3)))
    s.append(scalar)
  got_scalar, got_lookup = npg.execute(*(jnp.asarray(x, jnp.float32) for x in
                                         (ops, cols, values, rows, g, l, tm)))
  assert float(got_scalar) == pytest.approx(s[-1], rel=1e-5)
  np.testing.assert_allclose(got_lookup, lookup, rtol=1e-5, atol=1e-7)


def test_hand_set_selectors_greater_lesser_and_count():
  values, rows, g, l, tm = _model_inputs(0.0, 5.0)
  ops = one_hot(["greater", "lesser", "and", "count"], len(tq.OPS))
  cols = jnp.asarray(np.eye(3)[[0, 0, 0, 0]], jnp.float32)
  scalar, _ = npg.execute(ops, cols, values, rows, g, l, tm)
  assert float(scalar) == 2.0  # 1.5 and 3.0 lie in (0, 5)
  ops = one_hot(["greater", "lesser", "or", "sum"], len(tq.OPS))
  cols = jnp.asarray(np.eye(3)[[1, 1, 0, 0]], jnp.float32)
  scalar, _ = npg.execute(ops, cols, values, rows, g, l, tm)
  assert float(scalar) == pytest.approx(1.5 - 2.0 + 3.0 + 10.0 - 0.5)  # B > 0 or B < 5: all


def _example(words, numbers=(), text_columns=0):
  spec = tq.TableSpec(max_columns=2, text_columns=text_columns)
  pool = tq.spec_templates(spec, 2)
  index = next(i for i, t in enumerate(pool) if " ".join(t.words) == words)
  data = tq.generate(tq.TableSpec(max_columns=2, text_columns=text_columns, min_rows=5,
                                  max_rows=5, fixed_columns=True, templates=(index,)),
                     None, np.random.default_rng(0))
  data["numbers"][0, :len(numbers)] = numbers
  return {k: jnp.asarray(v[0]) for k, v in data.items()}


def test_pivot_attention_picks_the_number_left_of_its_word():
  """Hardmax pivots: beta = softmax(Z U(op)), both gradient modes agree under hardmax."""
  config = tiny_config(**{"data.max_columns": 2})
  ex = _example("greater <n> A and lesser <n> B count", (-1.0, 2.0))
  states = jnp.zeros((ex["words"].shape[0], config.model.hidden))
  states = states.at[ex["number_left"][0], 0].set(1.0).at[ex["number_left"][1], 1].set(1.0)
  u = jnp.zeros((len(tq.OPS) - 1, config.model.hidden))
  u = u.at[OP["greater"], 0].set(5.0).at[OP["lesser"], 1].set(5.0)
  values = np.asarray(ex["values"])
  for mode in npg.PIVOT_GRADIENTS:
    mode_config = sweep.apply_overrides(config, {"model.pivot_gradient": mode})
    g, l = npg.comparisons({"U": u}, ex, states, True, gc(mode_config))
    assert np.array_equal(np.asarray(g), values > -1.0)
    assert np.array_equal(np.asarray(l), values < 2.0)
  no_numbers = {**ex, "number_mask": jnp.zeros(2)}
  g, _ = npg.comparisons({"U": u}, no_numbers, states, True, gc(config))
  assert np.array_equal(np.asarray(g), values > config.model.default_pivot)


def test_soft_test_history_runs_the_argmax_of_the_trained_selections():
  config = tiny_config(**{"model.init_scale": 1.0, "data.max_columns": 3})
  hp = {k: jnp.float32(v) for k, v in npg.hparams(config).items()}
  params = npg.init_params(jax.random.key(3), None, hp, gc(config))
  q = jax.random.normal(jax.random.key(4), (config.model.hidden,))
  names, columns = params["V"][:3], jnp.array([True, True, False])
  soft_ops, soft_cols = npg.selections(params, q, names, columns, hp, gc(config), False)
  ops, cols = npg.selections(params, q, names, columns, hp, gc(config), True)
  assert np.array_equal(np.argmax(ops, -1), np.argmax(soft_ops, -1))
  assert np.array_equal(np.argmax(cols, -1), np.argmax(soft_cols, -1))
  assert np.all(np.asarray(cols)[:, 2] == 0) and np.all(np.sum(ops, -1) == 1)


def test_huber_and_lookup_loss_by_hand():
  assert float(npg.huber(jnp.float32(3.0), 10.0)) == 4.5
  assert float(npg.huber(jnp.float32(-30.0), 10.0)) == 10.0 * 30.0 - 50.0
  ex = {"values": jnp.zeros((3, 2)), "num_rows": jnp.int32(2), "num_columns": jnp.int32(2),
        "lookup": jnp.array([[1, 0], [0, 0], [1, 1]], jnp.int8)}
  lookup = jnp.array([[0.8, 0.1], [0.3, 0.5], [0.9, 0.9]])
  cells = [-np.log(0.8), -np.log(0.9), -np.log(0.7), -np.log(0.5)]  # row 2 is outside
  assert float(npg.lookup_loss(lookup, ex, gc(tiny_config()))) == pytest.approx(
      np.mean(cells), rel=1e-6)


def test_loss_fn_is_huber_or_weighted_lookup_loss():
  config = tiny_config(**{"model.huber_delta": 25.0, "model.lookup_weight": 75.0})
  data = npg.load_data(config).train
  batch = {k: jnp.asarray(v[:8]) for k, v in data.items()}
  hp = {k: jnp.float32(v) for k, v in npg.hparams(config).items()}
  params = npg.init_params(jax.random.key(0), batch, hp, gc(config))
  loss, aux = npg.loss_fn(params, batch, jax.random.key(1), hp, gc(config))
  expected = []
  forward = jax.jit(lambda ex: npg.forward(params, ex, hp, gc(config), hard=False))
  for i in range(8):
    ex = {k: v[i] for k, v in batch.items()}
    out = forward(ex)
    if ex["is_scalar"]:
      a = abs(float(out["scalar"]) - float(ex["scalar"]))
      expected.append(0.5 * a * a if a <= 25.0 else 25.0 * a - 0.5 * 25.0 ** 2)
    else:
      rows = int(ex["num_rows"])
      p = np.clip(np.asarray(out["lookup"])[:rows, :1], 1e-7, 1 - 1e-7)
      y = np.asarray(ex["lookup"])[:rows, :1]
      expected.append(75.0 * np.mean(-(y * np.log(p) + (1 - y) * np.log(1 - p))))
  assert float(loss) == pytest.approx(np.mean(expected), rel=1e-4)
  assert set(aux) == {"scalar_loss", "lookup_loss"}


def test_answer_is_judged_by_the_last_operation_and_first_decimal():
  ex = {"values": jnp.zeros((2, 1)), "num_rows": jnp.int32(2), "num_columns": jnp.int32(1),
        "is_scalar": jnp.float32(1.0), "scalar": jnp.float32(10.04),
        "lookup": jnp.array([[1], [0]], jnp.int8)}
  ops = one_hot(["reset", "reset", "reset", "sum"], 9)
  out = {"scalar": jnp.float32(10.0), "lookup": jnp.zeros((2, 1)), "ops": ops}
  assert float(npg.correct(out, ex)) == 1.0
  assert float(npg.correct({**out, "scalar": jnp.float32(10.1)}, ex)) == 0.0
  assert float(npg.correct({**out, "ops": one_hot(["reset"] * 4, 9)}, ex)) == 0.0
  lookup_ex = {**ex, "is_scalar": jnp.float32(0.0)}
  assign = one_hot(["reset", "reset", "reset", "assign"], 9)
  right = {**out, "ops": assign, "lookup": jnp.array([[1.0], [0.0]])}
  assert float(npg.correct(right, lookup_ex)) == 1.0
  assert float(npg.correct({**right, "ops": ops}, lookup_ex)) == 0.0
  assert float(npg.correct({**right, "lookup": jnp.array([[1.0], [1.0]])}, lookup_ex)) == 0.0


def test_text_match_and_bidirectional_models_run():
  config = tiny_config(**{"data.max_columns": 2, "data.text_columns": 1,
                          "model.bidirectional": True, "data.train_size": 60})
  data = npg.load_data(config)
  batch = {k: jnp.asarray(v[:4]) for k, v in data.train.items()}
  hp = {k: jnp.float32(v) for k, v in npg.hparams(config).items()}
  params = npg.init_params(jax.random.key(0), batch, hp, gc(config))
  assert params["U"].shape[0] == 10 and params["W_op"].shape[1] == 3 * config.model.hidden
  group = gc(config)
  loss, _ = jax.jit(lambda p, b: npg.loss_fn(p, b, jax.random.key(1), hp, group))(params, batch)
  metrics = jax.jit(lambda p, b: npg.eval_fn(p, b, hp, group))(params, batch)
  assert np.isfinite(float(loss)) and metrics["accuracy"].shape == (4,)


def test_validate_names_bad_fields():
  with pytest.raises(UsageError, match="data.text_columns"):
    trainer.validate(tiny_config(**{"data.text_columns": 1}), npg.EXPERIMENT)
  with pytest.raises(UsageError, match="data.templates"):
    trainer.validate(tiny_config(**{"data.templates": (23,)}), npg.EXPERIMENT)
  with pytest.raises(UsageError, match="model.pivot_gradient"):
    trainer.validate(tiny_config(**{"model.pivot_gradient": "straight"}), npg.EXPERIMENT)


def test_wilson_interval():
  low, high = npt.wilson(9, 216)
  # By hand: centre 0.04968, half-width 0.02760.
  assert (round(low, 4), round(high, 4)) == (0.0221, 0.0773)
  assert npt.wilson(0, 10)[0] == 0.0 and npt.wilson(10, 10)[1] == pytest.approx(1.0)
  with pytest.raises(ValueError):
    npt.wilson(3, 2)


@pytest.mark.parametrize("variant, num_runs, groups", [("table4_single", 648, 4),
                                                        ("table4", 288, 4), ("small", 8, 1)])
def test_sweeps_validate_and_group(variant, num_runs, groups):
  config = configs.get_config(variant)
  runs = [sweep.apply_overrides(config, o) for o in configs.get_sweep(variant)]
  assert len(runs) == num_runs
  for run in runs:
    trainer.validate(run, npg.EXPERIMENT)
  assert len({trainer.group_key(run, npg.EXPERIMENT) for run in runs}) == groups


def test_learns_single_column_sum_print_and_comparisons():
  """Real training through the shared trainer (3 seeds vmapped, no noise) on the
  single-column templates sum, print and greater/lesser n sum/print; held-out questions:
  one per template on 120-row tables in [-200, 200]. At least one seed answers all.
  (Count questions learn far slower, their Huber gradient being small beside the sums':
  thousands of steps, beyond a CI budget.)"""
  config = tiny_config(**{
      "model.hidden": 32, "data.train_size": 2000, "data.templates": (0, 2, 3, 5, 6, 8),
      "num_epochs": TRAIN_EPOCHS, "train.eval_every_epochs": TRAIN_EPOCHS,
      "train.runs_per_batch": 3})
  config = fields.complete(config, {**trainer.FIELDS, **npg.EXPERIMENT.fields})
  runs = [(s, sweep.apply_overrides(config, {"seed": s, "noise.eta": 0.0})) for s in range(3)]
  data = npg.load_data(config)
  assert len(data.evals["test"]["words"]) == 6
  results = trainer.train_group(npg.EXPERIMENT, runs, data,
                                trainer.GroupCallbacks(on_metrics=lambda row: None))
  accuracies = [r["test_accuracy"] for r in results.values()]
  assert max(accuracies) == 1.0, accuracies
