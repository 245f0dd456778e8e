"""GRU4Rec: session data, session-parallel batches, losses, ranking metrics, baselines,
and training on the real Diginetica sample (skipped when ../shared does not have it)."""

import os
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import gru4rec as gru4rec_config
from experiments import gru4rec, rec_baselines, session_data
from gradnoise import launch, trainer
from gradnoise.errors import UsageError

FIXTURE = str(pathlib.Path(__file__).parent / "fixtures" / "sessions_tiny.csv")
SAMPLE = pathlib.Path(__file__).parents[2] / "shared/data/sessions/diginetica_sample.csv"


def tiny_split():
  return session_data.split(session_data.read_events(FIXTURE), 7, 1, FIXTURE)


def test_loader_on_the_handwritten_fixture():
  split = tiny_split()
  # Session 3 has one click; session 4 loses item 99 (not in train) and then has one.
  np.testing.assert_array_equal(split.item_ids, [10, 11, 12])
  np.testing.assert_array_equal(split.train.items, [0, 1, 2, 0, 1])  # session 2 by timeframe
  np.testing.assert_array_equal(split.train.offsets, [0, 3, 5])
  np.testing.assert_array_equal(split.test.items, [2, 0, 1])  # session 5 by timeframe
  np.testing.assert_array_equal(split.test.offsets, [0, 3])
  prefix, target = session_data.prefixes(split.test)
  np.testing.assert_array_equal(prefix, [[-1, 2], [2, 0]])
  np.testing.assert_array_equal(target, [0, 1])


def test_rsc15_format_and_the_last_day_split(tmp_path):
  path = tmp_path / "clicks.dat"
  path.write_text("1,2014-04-01T10:00:00.000Z,7,0\n1,2014-04-01T10:01:00.000Z,8,0\n"
                  "2,2014-04-03T09:00:00.000Z,8,0\n2,2014-04-03T09:00:05.000Z,7,0\n"
                  "3,2014-04-02T09:00:00.000Z,8,0\n3,2014-04-02T08:59:00.000Z,7,0\n")
  split = session_data.split(session_data.read_events(str(path)), 1, 1, str(path))
  np.testing.assert_array_equal(split.train.items, [0, 1, 0, 1])  # sessions 1, 3 by time
  np.testing.assert_array_equal(split.test.items, [1, 0])


@pytest.mark.parametrize("text, line", [
    ("session_id;user_id;item_id;timeframe;eventdate\n1;NA;5;1;2016-05-01\n1;NA;x;2;"
     "2016-05-01\n", 3),
    ("session_id;user_id;item_id;timeframe;eventdate\n1;NA;5;1\n", 2),
    ("session_id;user_id;item_id;timeframe;eventdate\n1;NA;5;1;2016-13-01\n", 2),
    ("1,2014-04-01T10:00:00Z,7,0\n1,yesterday,8,0\n", 2),
    ("sid item time\n", 1),
    ("", 1),
])
def test_malformed_file_is_one_usage_error_naming_file_and_line(tmp_path, text, line):
  path = tmp_path / "bad.csv"
  path.write_text(text)
  with pytest.raises(UsageError, match=f"{path}, line {line}:"):
    session_data.read_events(str(path))


def test_missing_file_is_a_usage_error():
  with pytest.raises(UsageError, match="no/such/file.csv"):
    session_data.read_events("no/such/file.csv")


def test_session_parallel_batches_against_a_hand_built_example():
  # Sessions of 3, 2, 4, 2 and 3 clicks (events 0-2, 3-4, 5-8, 9-10, 11-13), 2 slots.
  offsets = np.array([0, 3, 5, 9, 11, 14])
  inputs, reset = session_data.session_parallel(offsets, 2)
  np.testing.assert_array_equal(inputs, [[0, 3], [1, 5], [9, 6], [11, 7]])
  np.testing.assert_array_equal(reset, [[1, 1], [0, 1], [1, 0], [1, 0]])
  # Stops when slot 1 finishes session 2 and no session is left (event 12 is not fed).


def sigmoid(x):
  return 1 / (1 + np.exp(-x))


def test_bpr_and_top1_against_their_formulas():
  r = np.random.default_rng(0).normal(size=(5, 5))
  b = len(r)
  bpr, top1 = [], []
  for i in range(b):
    negatives = [j for j in range(b) if j != i]
    # Paper sec. 3.1.3 over the B - 1 negatives, normalised by B (official code), plus
    # the diagonal's constants: -log sigma(0) / B for BPR, sigma(0) / B for TOP1.
    bpr.append(-sum(np.log(sigmoid(r[i, i] - r[i, j])) for j in negatives) / b
               + np.log(2) / b)
    top1.append(sum(sigmoid(r[i, j] - r[i, i]) + sigmoid(r[i, j] ** 2) for j in negatives) / b
                + 0.5 / b)
  np.testing.assert_allclose(gru4rec.bpr(jnp.asarray(r)), np.mean(bpr), rtol=1e-5)
  np.testing.assert_allclose(gru4rec.top1(jnp.asarray(r)), np.mean(top1), rtol=1e-5)
  xe = -np.mean([np.log(np.exp(r[i, i]) / np.exp(r[i]).sum()) for i in range(b)])
  np.testing.assert_allclose(gru4rec.cross_entropy(jnp.asarray(r)), xe, rtol=1e-5)


def test_recall_and_mrr_at_20_on_a_hand_made_ranking_with_ties():
  scores = np.zeros((4, 30))
  scores[0, :5] = [9, 8, 8, 8, 1]  # target 2: 1 above, tied with 2 others
  scores[1, 3] = 1  # target 3: alone on top
  scores[2, :] = np.arange(30)[::-1]  # target 20: 20 items above it (rank 21)
  scores[3, :] = 1  # target 0: tied with all 30 items
  targets = np.array([2, 3, 20, 0])
  expected_ranks = {"conservative": [4, 1, 21, 30], "optimistic": [2, 1, 21, 1],
                    "median": [3, 1, 21, 15.5]}
  for ties, ranks in expected_ranks.items():
    got = rec_baselines.target_ranks(scores, targets, ties)
    np.testing.assert_allclose(got, ranks)
    metrics = rec_baselines.recall_mrr(got)
    hit = np.array(ranks) <= 20
    np.testing.assert_allclose(metrics["recall20"], hit)
    np.testing.assert_allclose(metrics["mrr20"], np.where(hit, 1 / np.array(ranks), 0))
  jax_ranks = rec_baselines.target_ranks(jnp.asarray(scores, jnp.float32), targets,
                                         "conservative")
  np.testing.assert_allclose(jax_ranks, expected_ranks["conservative"])


def test_baselines_on_the_fixture():
  split = tiny_split()
  train, n = split.train, split.num_items
  prefix = np.array([[-1, 2], [2, 0]])
  np.testing.assert_array_equal(rec_baselines.pop(train, n)(prefix)[0], [2, 2, 1])
  # S-POP: the session's clicks, then popularity / (max + 1) = [2/3, 2/3, 1/3].
  np.testing.assert_allclose(rec_baselines.spop(train, n)(prefix)[1],
                             [1 + 2 / 3, 2 / 3, 1 + 1 / 3])
  # cooc(0, 1) = 2 sessions, cooc(0, 2) = cooc(1, 2) = 1; clicks 2, 2, 1; lam 0 = cosine.
  sim = rec_baselines.knn_similarity(train, n, lam=0.0).toarray()
  np.testing.assert_allclose(sim, [[0, 1, 1 / np.sqrt(2)], [1, 0, 1 / np.sqrt(2)],
                                   [1 / np.sqrt(2), 1 / np.sqrt(2), 0]])
  np.testing.assert_allclose(rec_baselines.knn(train, n)(prefix)[1], [0, 2 / 22, 1 / 22 ** .5
                                                                      / 21 ** .5])
  result = rec_baselines.evaluate("S-POP", train, n, prefix, np.array([0, 1]))
  assert result == {"recall20": 1.0, "mrr20": pytest.approx(1 / 3)}  # both ranked 3rd


def tiny_config():
  """The small variant on the fixture: 2 slots, 8 units."""
  config = gru4rec_config.get_config("small")
  config.data.path = FIXTURE
  config.data.min_item_support = 1
  config.batch_size = config.data.sessions_per_batch = 2
  config.model.hidden = 8
  return config


def group_config(config):
  return trainer.group_config(config, gru4rec.EXPERIMENT)


def test_load_data_lays_out_the_session_parallel_order():
  data = gru4rec.load_data(tiny_config())
  # Two sessions in two slots: one step (session 1's first click, session 2's), then slot 1
  # has no session left.
  np.testing.assert_array_equal(data.train["item"], [0, 0])
  np.testing.assert_array_equal(data.train["target"], [1, 1])
  np.testing.assert_array_equal(data.train["reset"], [True, True])
  spec = trainer.GroupSpec(gru4rec.EXPERIMENT, group_config(tiny_config()), 6, 2)
  np.testing.assert_array_equal(trainer.epoch_order(spec, {}, 3), [[0, 1], [2, 3], [4, 5]])


def test_batch_size_must_equal_sessions_per_batch():
  config = tiny_config()
  config.batch_size = 3
  with pytest.raises(UsageError, match="data.sessions_per_batch"):
    gru4rec.validate(config)


def model_and_params(config):
  gc = group_config(config)
  batch = {"item": jnp.array([0, 1]), "target": jnp.array([1, 2]),
           "reset": jnp.array([True, False])}
  params = jax.jit(lambda k, b: gru4rec.init_params(k, b, {}, gc))(jax.random.key(0), batch)
  return gc, batch, gru4rec._model(gc), params


def test_hidden_state_resets_exactly_in_the_slots_that_start_a_session():
  gc, batch, model, params = model_and_params(tiny_config())  # slot 0 resets, slot 1 not
  loss_fn = jax.jit(lambda p, b, k, hp: gru4rec.loss_fn(p, b, k, hp, gc))
  step = jax.jit(lambda h: model.apply({"params": params}, h, batch["item"],
                                       method=gru4rec.GRU4Rec.step))
  carried = jax.random.normal(jax.random.key(1), (2, 8))
  other = carried.at[0].set(100.0)  # a different old state in the resetting slot only
  new = [loss_fn(params, batch, jax.random.key(2), {"hidden": h, "dropout": jnp.float32(0)})
         [1]["state"]["hidden"] for h in (carried, other)]
  np.testing.assert_array_equal(new[0], new[1])  # the old state of slot 0 is not read
  np.testing.assert_allclose(new[0][0], step(jnp.zeros((2, 8)))[0], rtol=1e-6, atol=1e-7)
  np.testing.assert_allclose(new[0][1], step(carried)[1], rtol=1e-6, atol=1e-7)
  assert not np.allclose(new[0][1], step(jnp.zeros((2, 8)))[1])


def test_eval_runs_the_gru_over_the_unpadded_prefix():
  gc, _, model, params = model_and_params(tiny_config())
  batch = {"prefix": jnp.array([[-1, -1, 2], [1, 2, 0]]), "target": jnp.array([0, 1])}
  metrics = jax.jit(lambda p, b: gru4rec.eval_fn(p, b, {}, gc))(params, batch)
  step = jax.jit(lambda h, items: model.apply({"params": params}, h, jnp.array(items),
                                              method=gru4rec.GRU4Rec.step))
  h = step(step(step(jnp.zeros((1, 8)), [1]), [2]), [0])
  scores = model.apply({"params": params}, h, method=gru4rec.GRU4Rec.all_scores)
  rank = np.sum(np.asarray(scores[0]) >= np.asarray(scores[0, 1]))
  assert metrics["mrr20"][1] == pytest.approx(1 / rank)
  assert metrics["recall20"].tolist() == [1.0, 1.0]  # 3 items: every rank is within 20


def test_the_trainer_carries_and_resets_the_hidden_state_across_steps(tmp_path):
  # Sessions of 3, 2, 4, 2, 3 clicks in train (the hand-built example: 4 steps of 2 slots)
  # and one test session; a learning rate so small that the weights do not change.
  lengths = [3, 2, 4, 2, 3]
  lines = [f"{s};NA;{(s + k) % 4};{k};2016-05-01" for s, n in enumerate(lengths, 1)
           for k in range(n)] + ["9;NA;1;0;2016-05-20", "9;NA;2;1;2016-05-20"]
  path = tmp_path / "sessions.csv"
  path.write_text("\n".join([";".join(session_data.DIGINETICA_HEADER), *lines]) + "\n")
  config = tiny_config()
  config.data.path = str(path)
  config.optimizer.learning_rate = 1e-30
  config.model.dropout = 0.0
  data = gru4rec.load_data(config)
  np.testing.assert_array_equal(data.train["reset"], [1, 1, 0, 1, 1, 0, 1, 0])
  spec = trainer.GroupSpec(gru4rec.EXPERIMENT, group_config(config), data.num_train, 2)
  hp = trainer.run_hparams(config, gru4rec.EXPERIMENT)
  state = jax.jit(lambda hp, t: trainer.init_run(spec, hp, t))(hp, data.train)
  params = state.params
  state, _ = jax.jit(lambda s, hp, t: trainer.train_epoch(spec, s, hp, t, 0))(
      state, hp, data.train)
  model = gru4rec._model(group_config(config))
  step = jax.jit(lambda h, items: model.apply({"params": params}, h, items,
                                              method=gru4rec.GRU4Rec.step))
  h = jnp.full((2, 8), 7.0)  # whatever was carried: every slot resets at step 0
  for t in range(4):
    rows = slice(2 * t, 2 * t + 2)
    h = step(jnp.where(data.train["reset"][rows, None], 0.0, h), data.train["item"][rows])
  np.testing.assert_allclose(state.extra["hidden"], h, rtol=1e-5, atol=1e-6)


@pytest.mark.skipif(not SAMPLE.is_file(), reason=f"Diginetica sample not found at {SAMPLE}")
def test_training_on_the_diginetica_sample_beats_pop(tmp_path):
  config = gru4rec_config.get_config("small")
  config.data.path = str(SAMPLE)
  config.model.loss, config.model.final_act = "xe", "linear"
  config.num_epochs = 5
  config.train.eval_every_epochs = 5
  [result] = launch.run(config, str(tmp_path / "work"), sweep=False, out=open(os.devnull, "w"))
  split = session_data.split(session_data.read_events(str(SAMPLE)), 7, 5, str(SAMPLE))
  prefix, target = session_data.prefixes(split.test)
  pop = rec_baselines.evaluate("POP", split.train, split.num_items, prefix, target)
  print(f"sample: GRU4Rec (xe, 5 epochs) recall@20 {result['test_recall20']:.3f}, "
        f"mrr@20 {result['test_mrr20']:.3f}; POP {pop['recall20']:.3f}, {pop['mrr20']:.3f}")
  assert not result["diverged"]
  assert result["test_recall20"] > 2 * pop["recall20"]
  assert result["test_mrr20"] > 2 * pop["mrr20"]
