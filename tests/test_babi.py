"""experiments.babi_data and experiments.memnet: the bAbI loader, the MemN2N model, and
training on the real task qa1."""

import atexit
import dataclasses
import hashlib
import os
import re
import shutil
import tarfile
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import closed_url

import gradnoise
from configs import memnet_babi
from experiments import babi_data, memnet
from gradnoise import experiment, report, trainer
from gradnoise.errors import UsageError



def _tiny_babi_folder() -> str:
  """A bAbI-layout folder (en/qa<N>_<name>_<split>.txt) built from our handwritten stories.

  The stories are tracked as .story files so that no file in the repo looks like bAbI data.
  """
  folder = tempfile.mkdtemp(prefix="gradnoise-babi-")
  atexit.register(shutil.rmtree, folder, ignore_errors=True)
  os.makedirs(os.path.join(folder, "en"))
  source = os.path.join(os.path.dirname(__file__), "fixtures", "babi_tiny")
  for name in os.listdir(source):
    shutil.copy(os.path.join(source, name),
                os.path.join(folder, "en", name.replace(".story", ".txt")))
  return folder


FIXTURES = _tiny_babi_folder()


def gc(config):
  """The config as the compiled program's functions see it."""
  return trainer.group_config(config, memnet.EXPERIMENT)
TINY_QA1 = os.path.join(FIXTURES, "en", "qa1_tiny-stories_train.txt")
REAL_BABI = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "babi",
                         "tasks_1-20_v1-2")


def config(path=FIXTURES, tasks=(1,), **model):
  """The small variant on ``tasks``; the learning-rate restart follows linear start."""
  c = memnet_babi.get_config("small")
  c.data.path, c.data.tasks, c.data.task = path, list(tasks), tasks[0]
  c.model.update(model)
  c.optimizer.restart_epoch = c.model.linear_start_epochs
  return c


def hparams(c, epoch=0):
  hp = {k: jnp.float32(v) for k, v in memnet.hparams(c).items()}
  return {**hp, "epoch": jnp.int32(epoch)}


def words(vocab, ids):
  return " ".join(vocab[i] for i in ids if i)


def test_tokenize_lower_cases_and_strips_full_stops_and_question_marks():
  assert babi_data.tokenize("Where is Mary? ") == ["where", "is", "mary"]
  assert babi_data.tokenize("John went back to the Hallway.") == [
      "john", "went", "back", "to", "the", "hallway"]
  assert babi_data.tokenize("Is it here ?") == ["is", "it", "here"]


def test_read_task_file_gives_questions_with_their_story_so_far():
  examples = babi_data.read_task_file(TINY_QA1)
  assert len(examples) == 11
  first = examples[0]
  assert first.memories == [["mary", "moved", "to", "the", "bathroom"],
                            ["john", "went", "to", "the", "hallway"]]
  assert (first.query, first.answer) == (["where", "is", "mary"], "bathroom")
  assert len(examples[1].memories) == 4  # questions are not memories
  # IDs restart at 1: a new story with an empty memory.
  assert examples[2].memories == [["sandra", "travelled", "to", "the", "office"]]
  assert examples[2].answer == "office"
  # A list answer (tasks 8, 19) is one token.
  assert examples[6].query == ["what", "is", "john", "carrying"]
  assert examples[6].answer == "apple,milk"


def test_load_one_task_vectorises_most_recent_memory_first():
  data = babi_data.load_babi(FIXTURES, "en", [1])
  train, valid, test = (data.splits[s] for s in babi_data.SPLITS)
  # 11 training questions: the last 10% (floor(9.9) = 9 kept) are the validation set.
  assert train["answers"].shape == (1, 9) and valid["answers"].shape == (1, 2)
  assert test["answers"].shape == (1, 2)
  assert data.memory_size == 5  # the longest story before a question (< 50)
  assert data.sentence_len == 7  # "where was the apple before the garden"
  assert train["stories"].shape == (1, 9, 5, 7) and train["queries"].shape == (1, 9, 7)
  assert all(v.dtype == np.int32 for s in data.splits.values() for v in s.values())
  assert data.vocab[0] == babi_data.NIL and data.vocab[1:] == sorted(data.vocab[1:])
  vocab = data.vocab
  story = train["stories"][0, 1]
  assert [words(vocab, s) for s in story] == [
      "sandra moved to the garden", "daniel went back to the hallway",
      "john went to the hallway", "mary moved to the bathroom", ""]
  assert words(vocab, train["queries"][0, 1]) == "where is daniel"
  assert vocab[train["answers"][0, 1]] == "hallway"
  assert [words(vocab, s) for s in train["stories"][0, 2]][:2] == [
      "sandra travelled to the office", ""]
  assert vocab[train["answers"][0, 6]] == "apple,milk"
  assert [vocab[a] for a in valid["answers"][0]] == ["hallway", "garden"]
  assert words(vocab, valid["queries"][0, 1]) == "where is the milk"
  assert [vocab[a] for a in test["answers"][0]] == ["kitchen", "garden"]
  assert [words(vocab, s) for s in test["stories"][0, 1]][:3] == [
      "mary moved to the garden", "daniel went to the kitchen", ""]


def test_memory_keeps_the_most_recent_sentences():
  data = babi_data.load_babi(FIXTURES, "en", [1], memory_size=3)
  story = data.splits["train"]["stories"][0, 4]  # "where is john" after 5 statements
  assert [words(data.vocab, s) for s in story] == [
      "sandra went to the bedroom", "daniel moved to the bedroom", "mary went to the office"]


def test_several_tasks_share_vocabulary_and_shapes():
  one = babi_data.load_babi(FIXTURES, "en", [1])
  both = babi_data.load_babi(FIXTURES, "en", [1, 2])
  assert both.tasks == (1, 2)
  assert set(one.vocab) < set(both.vocab) and {"yes", "no", "maybe"} < set(both.vocab)
  assert both.sentence_len == 9  # "fred is either in the school or the cinema"
  assert both.splits["train"]["stories"].shape == (2, 9, 5, 9)
  second = both.splits["train"]
  assert words(both.vocab, second["queries"][1, 0]) == "is bill in the park"
  assert both.vocab[second["answers"][1, 0]] == "yes"
  first = second["stories"][0, 1]
  assert [words(both.vocab, s) for s in first][0] == "sandra moved to the garden"
  # A question that opens a story has an empty memory.
  assert not second["stories"][1, 6].any()
  assert both.vocab[second["answers"][1, 6]] == "no"


@pytest.mark.parametrize("line, why", [
    ("Mary went home.", "numeric ID"),
    ("2 Mary went home.", "does not follow"),
    ("1 Where is Mary? \tkitchen", "2 tab-separated fields"),
    ("1 Where is Mary?", "question without"),
    ("1 Where is Mary? \tkitchen\tone", "not numbers"),
    ("1 Where is Mary? \tthe kitchen\t1", "not one word"),
])
def test_malformed_line_names_file_and_line(tmp_path, line, why):
  path = tmp_path / "qa1_bad_train.txt"
  path.write_text(f"1 Mary went to the kitchen.\n2 Where is Mary? \tkitchen\t1\n{line}\n")
  with pytest.raises(UsageError, match=f"{re.escape(str(path))}, line 3: .*{why}"):
    babi_data.read_task_file(str(path))


def test_missing_folder_set_task_and_file_are_usage_errors(tmp_path):
  with pytest.raises(UsageError, match="data.path: not set"):
    babi_data.load_babi(None, "en", [1])
  missing = tmp_path / "nowhere"
  with pytest.raises(UsageError, match=re.escape(f"{missing}/en is not a folder")):
    babi_data.load_babi(str(missing), "en", [1])
  with pytest.raises(UsageError, match="en-10k is not a folder"):
    babi_data.load_babi(FIXTURES, "en-10k", [1])
  with pytest.raises(UsageError, match="data.babi_set='hn' is unknown"):
    babi_data.load_babi(FIXTURES, "hn", [1])
  with pytest.raises(UsageError, match="no file matching qa3_\\*_train.txt"):
    babi_data.load_babi(FIXTURES, "en", [1, 3])
  with pytest.raises(UsageError, match="data.tasks=\\[21\\] is invalid"):
    babi_data.load_babi(FIXTURES, "en", [21])
  (tmp_path / "en").mkdir()
  (tmp_path / "en" / "qa1_x_train.txt").write_text("1 A b.\n2 C d? \te\t1\n")
  with pytest.raises(UsageError, match="no file matching qa1_\\*_test.txt"):
    babi_data.load_babi(str(tmp_path), "en", [1])


def test_tasks_with_different_question_counts_do_not_stack(tmp_path):
  (tmp_path / "en").mkdir()
  for task, questions in ((1, 2), (2, 3)):
    for split in ("train", "test"):
      lines = "".join(f"{2 * i + 1} A b.\n{2 * i + 2} C d? \te\t{2 * i + 1}\n"
                      for i in range(questions))
      (tmp_path / "en" / f"qa{task}_x_{split}.txt").write_text(lines)
  with pytest.raises(UsageError, match="differ in their number of train questions"):
    babi_data.load_babi(str(tmp_path), "en", [1, 2])


def test_position_encoding_matches_its_formulas():
  length, dim = 4, 3
  paper = memnet.position_encoding(length, dim, "paper")
  reference = memnet.position_encoding(length, dim, "reference")
  for j in range(1, length + 1):
    for k in range(1, dim + 1):
      want = (1 - j / length) - (k / dim) * (1 - 2 * j / length)
      assert paper[j - 1, k - 1] == pytest.approx(want, abs=1e-6)
      want = 1 + 4 * (k - (dim + 1) / 2) * (j - (length + 1) / 2) / (dim * length)
      assert reference[j - 1, k - 1] == pytest.approx(want, abs=1e-6)


def test_memory_times_random_noise_inserts_empty_times():
  present = jnp.arange(50)[None, :] < jnp.array([[0], [1], [10], [40], [50]])
  n = present.sum(-1)
  fixed = np.asarray(memnet.memory_times(present))
  assert (fixed == np.arange(1, 51)).all()
  shifted = []
  for seed in range(5):
    times = np.asarray(memnet.memory_times(present, jax.random.key(seed), 0.1))
    for row, count in zip(times, np.asarray(n)):
      used = row[:count]
      assert (np.diff(used) >= 0).all()  # most recent first
      below_cap = used[used < 50]
      assert len(np.unique(below_cap)) == len(below_cap)  # distinct but for the cap at M
      assert (used >= 1).all() and (used <= min(count + -(-count // 10), 50)).all()
    shifted.append(not np.array_equal(times[3, :40], fixed[3, :40]))
  assert any(shifted)  # some empty times were inserted
  no_blanks = memnet.memory_times(present, jax.random.key(0), 0.0)
  np.testing.assert_array_equal(np.where(present, no_blanks, 0), np.where(present, fixed, 0))


@pytest.fixture(scope="module")
def tiny():
  """A config, a batch and initial parameters on the fixture task 1."""
  c = config()
  data = memnet._data(c)
  batch = {k: jnp.asarray(v[0]) for k, v in data.splits["train"].items()}
  params = memnet.init_params(jax.random.key(0), None, hparams(c), gc(c))
  return c, batch, params


def test_parameters_are_adjacent_tied_matrices_with_temporal_rows(tiny):
  c, batch, params = tiny
  data = memnet._data(c)
  assert len(params) == c.model.hops + 1  # B = A^1, C^1 = A^2, ..., C^K = W^T
  assert all(p.shape == (len(data.vocab) + data.memory_size, 20) for p in params)
  assert float(jnp.std(params[0])) == pytest.approx(0.1, rel=0.2)
  logits = memnet.apply(params, batch["stories"], batch["queries"],
                        memnet.memory_times(batch["stories"].any(-1)), True, c)
  assert logits.shape == (9, params[0].shape[0])
  assert (logits[:, 0] == 0).all()  # the empty word has a zero embedding


def test_linear_start_switches_to_softmax_at_the_configured_epoch(tiny):
  c, batch, params = tiny
  c = config(linear_start_epochs=2)
  times = memnet.memory_times(batch["stories"].any(-1))
  linear = memnet.apply(params, batch["stories"], batch["queries"], times, False, c)
  soft = memnet.apply(params, batch["stories"], batch["queries"], times, True, c)
  assert not np.allclose(linear, soft, atol=1e-4)
  for epoch, want in ((0, linear), (1, linear), (2, soft), (3, soft)):
    out = memnet.eval_fn(params, batch, hparams(c, epoch), gc(c))
    ce = optax.softmax_cross_entropy_with_integer_labels(want, batch["answers"])
    np.testing.assert_allclose(out["loss"], ce, rtol=1e-5)
    np.testing.assert_array_equal(out["error"], jnp.argmax(want, -1) != batch["answers"])
  c0 = config(linear_start_epochs=0, random_time=0.0)
  loss, aux = memnet.loss_fn(params, batch, jax.random.key(0), hparams(c0, 0), gc(c0))
  ce = optax.softmax_cross_entropy_with_integer_labels(soft, batch["answers"])
  assert float(loss) == pytest.approx(float(ce.sum()), rel=1e-5)  # summed, as the reference
  assert set(aux) == {"error"}


def test_per_matrix_clipping_bounds_each_gradient_norm(tiny):
  c, batch, params = tiny
  big = [p * 30 for p in params]
  grads = jax.grad(lambda p: memnet.loss_fn(p, batch, jax.random.key(0), hparams(c), gc(c))[0])(big)
  norms = [float(jnp.linalg.norm(g)) for g in grads]
  assert max(norms) > 40
  clipped, _ = gradnoise.clip_by_leaf_norm(40.0).update(grads, None)
  for g, c_g, norm in zip(grads, clipped, norms):
    assert float(jnp.linalg.norm(c_g)) <= 40 * (1 + 1e-5)
    if norm <= 40:
      np.testing.assert_array_equal(c_g, g)


@pytest.mark.parametrize("mask", [False, True])
def test_empty_slots_take_their_share_of_the_attention(mask):
  """One hop over memory [sentence, empty, empty]: in the reference's softmax the empty
  slots score 0 and take weight 2 / (e^s + 2); masked, the sentence takes it all."""
  c = config(hops=1, mask_empty_slots=mask)
  rng = np.random.default_rng(0)
  a, w = (rng.normal(size=(7, 2)).astype(np.float32) for _ in range(2))  # 4 words + 3 times
  a[0] = w[0] = 0  # the empty word
  stories, queries = jnp.array([[[1, 2], [0, 0], [0, 0]]]), jnp.array([[3, 0]])
  logits = memnet.apply([jnp.asarray(a), jnp.asarray(w)], stories, queries,
                        memnet.memory_times(stories.any(-1)), True, c)
  enc = memnet.position_encoding(3, 2)  # J = sentence length + 1; time word (row 4) at J
  u = a[3] * enc[0]
  memory_in = a[1] * enc[0] + a[2] * enc[1] + a[4] * enc[2]
  memory_out = w[1] * enc[0] + w[2] * enc[1] + w[4] * enc[2]
  score = memory_in @ u
  weight = 1.0 if mask else np.exp(score) / (np.exp(score) + 2 * np.exp(0.0))
  np.testing.assert_allclose(logits[0], (u + weight * memory_out) @ w.T, rtol=1e-5, atol=1e-6)


def reference_rates(rate, epochs, step):
  """The MemN2N reference's rate per epoch (train.m: at the start of epoch ep = 1, 2, ...,
  halved if mod(ep, step) == 0)."""
  rates = []
  for ep in range(1, epochs + 1):
    rate = rate / 2 if ep % step == 0 else rate
    rates.append(rate)
  return np.array(rates)


def trainer_rates(c, epochs, steps=2):
  """The learning rate of each epoch's steps [epochs, steps] of the trainer's optimizer."""
  hp = {k: jnp.asarray(v) for k, v in trainer.run_hparams(c, memnet.EXPERIMENT).items()}
  tx = trainer.make_optimizer(gc(c), hp, jax.random.key(0), steps)
  params = jnp.zeros(3)

  def step(state, _):
    updates, state = tx.update(jnp.ones(3), state, params)
    return state, -updates[0]

  _, rates = jax.lax.scan(step, tx.init(params), None, length=epochs * steps)
  return np.asarray(rates).reshape(epochs, steps)


def test_learning_rate_schedules_are_the_references():
  two = config(linear_start_epochs=20)  # 0.005, restart at 20
  one = config(linear_start_epochs=0)
  one.optimizer.learning_rate = 0.01
  for c in (one, two):
    c.noise.eta, c.clip.norm = 0.0, None
  got = trainer_rates(two, 120)
  assert (got == got[:, :1]).all()  # the rate changes between epochs only
  # train_linear_start.m: 20 epochs at 0.005 (decay step 21: none), then a fresh schedule.
  want = np.concatenate([reference_rates(0.005, 20, 21), reference_rates(0.005, 100, 25)])
  np.testing.assert_allclose(got[:, 0], want, rtol=1e-6)
  assert [got[e, 0] for e in (0, 19, 20, 43, 44, 68, 69, 119)] == pytest.approx(
      [0.005, 0.005, 0.005, 0.005, 0.0025, 0.0025, 0.00125, 0.0003125])
  got = trainer_rates(one, 120)[:, 0]
  np.testing.assert_allclose(got[:100], reference_rates(0.01, 100, 25), rtol=1e-6)
  assert got[100:] == pytest.approx([0.01 / 16] * 20)  # the reference stops at 100
  # Departures: one schedule from epoch 0 (no restart), first halving after 25 epochs.
  two.optimizer.restart_epoch, two.optimizer.decay_offset_epochs = 0, 0
  staircase = optax.exponential_decay(0.005, 25 * 2, 0.5, staircase=True)
  np.testing.assert_allclose(trainer_rates(two, 120).ravel(),
                             staircase(jnp.arange(240)), rtol=1e-6)


def svd_norm(x):
  return np.linalg.svd(np.asarray(x, np.complex128).reshape(-1, x.shape[-1]),
                       compute_uv=False)[0]


@pytest.mark.parametrize("shape, dtype, scale", [
    ((225, 20), np.float32, 1.0), ((20, 225), np.float32, 1e-3), ((3, 4, 5), np.float32, 1e30),
    ((30, 6), np.complex64, 1e-30), ((1, 1), np.float32, 7.0)])
def test_spectral_norm_matches_numpy_svd(shape, dtype, scale):
  rng = np.random.default_rng(len(shape))
  x = rng.normal(size=shape) + (1j * rng.normal(size=shape) if dtype == np.complex64 else 0)
  x = (x * scale).astype(dtype)
  assert float(gradnoise.spectral_norm(x)) == pytest.approx(svd_norm(x), rel=1e-5)


def test_spectral_norm_of_close_singular_values_vectors_and_zeros():
  rng = np.random.default_rng(0)
  left, right = (np.linalg.qr(rng.normal(size=(n, 8)))[0] for n in (40, 8))
  close = (left * [1, 1 - 1e-5, 0.5, 0.4, 0.3, 0.2, 0.1, 0]) @ right.T  # sigma_2 ~ sigma_1
  assert float(gradnoise.spectral_norm(close.astype(np.float32))) == pytest.approx(1, rel=1e-4)
  vector = rng.normal(size=5).astype(np.float32)
  assert float(gradnoise.spectral_norm(vector)) == pytest.approx(np.linalg.norm(vector), 1e-6)
  assert float(gradnoise.spectral_norm(np.zeros((4, 3), np.float32))) == 0


def test_spectral_clipping_per_matrix_and_global():
  rng = np.random.default_rng(0)
  grads = {"big": jnp.asarray(rng.normal(size=(225, 20)) * 10, jnp.float32),
           "small": jnp.asarray(rng.normal(size=(20, 5)), jnp.float32),
           "ids": jnp.arange(3)}
  norms = {k: svd_norm(v) for k, v in grads.items() if k != "ids"}
  assert norms["big"] > 40 > norms["small"] and np.linalg.norm(grads["big"]) > 3 * norms["big"]
  clipped, _ = gradnoise.clip_by_spectral_norm(40.0).update(grads, optax.EmptyState())
  assert svd_norm(clipped["big"]) == pytest.approx(40, rel=1e-5)
  np.testing.assert_allclose(clipped["big"], grads["big"] * 40 / norms["big"], rtol=1e-5)
  np.testing.assert_array_equal(clipped["small"], grads["small"])  # bit for bit
  np.testing.assert_array_equal(clipped["ids"], grads["ids"])
  # Global: the block-diagonal matrix's spectral norm, the largest leaf's.
  clipped, _ = gradnoise.clip_by_spectral_norm(40.0, per_leaf=False).update(grads, None)
  for k in norms:
    np.testing.assert_allclose(clipped[k], grads[k] * 40 / norms["big"], rtol=1e-5)
  with pytest.raises(ValueError, match="max_norm must be > 0"):
    gradnoise.clip_by_spectral_norm(0.0)


def test_one_and_two_stage_runs_in_one_batch_equal_each_alone():
  from gradnoise.sweep import apply_overrides
  base = config(tasks=(1, 2))
  base.num_epochs, base.batch_size = 4, 4  # 2 steps per epoch
  base.optimizer.decay_every_epochs = 2  # so that the restart matters within 4 epochs
  one = apply_overrides(base, {**memnet_babi.ONE_STAGE, "noise.eta": 0.0})
  two = apply_overrides(base, {**memnet_babi.TWO_STAGE, "model.linear_start_epochs": 2,
                               "optimizer.restart_epoch": 2, "data.task": 2, "seed": 1})
  assert trainer.group_key(one, memnet.EXPERIMENT) == trainer.group_key(two, memnet.EXPERIMENT)
  data = memnet.load_data(base)
  program = trainer.build_program(memnet.EXPERIMENT, base, data.num_train, tasks=True)

  def train(configs):
    hp = trainer.stack_hparams([trainer.run_hparams(c, memnet.EXPERIMENT) for c in configs],
                               len(configs))
    state = program.init(hp, data.train)
    for epoch in range(base.num_epochs):
      state, _ = program.train_epoch(state, hp, data.train, np.int32(epoch))
    return jax.tree.leaves(state.params)

  both = train([one, two])
  for i, c in enumerate((one, two)):
    for alone, batched in zip(train([c]), both):
      np.testing.assert_allclose(alone[0], batched[i], rtol=1e-5, atol=1e-6)
  assert not np.allclose(both[0][0], both[0][1])


def test_validate_names_bad_fields():
  trainer.validate(config(), memnet.EXPERIMENT)
  for field, value, match in [("data.task", 5, "data.task=5"),
                              ("model.hops", 0, "model.hops=0"),
                              ("model.random_time", 2.0, "model.random_time=2.0"),
                              ("model.position_encoding", "bow", "model.position_encoding"),
                              ("optimizer.restart_epoch", 5, "optimizer.restart_epoch=5"),
                              ("clip.norm_kind", "nuclear", "clip.norm_kind")]:
    c = config()
    section, name = field.split(".")
    c[section][name] = value
    with pytest.raises(UsageError, match=match):
      trainer.validate(c, memnet.EXPERIMENT)
  c = config(linear_start_epochs=0)
  c.optimizer.restart_epoch = 20  # a restart without linear start: not the reference
  with pytest.raises(UsageError, match="accepted: 0 .* or model.linear_start_epochs=0"):
    trainer.validate(c, memnet.EXPERIMENT)


@pytest.mark.parametrize("variant, runs", [("small", 48), ("table2", 800),
                                           ("table2_fixed", 400), ("hard", 15)])
def test_config_sweeps_are_one_compile_group(variant, runs):
  from gradnoise.sweep import apply_overrides
  base = memnet_babi.get_config(variant)
  base.data.path = "download"  # the default (None) is refused: the data must be named
  configs = [apply_overrides(base, o) for o in memnet_babi.get_sweep(variant)]
  assert len(configs) == runs
  for c in configs:
    trainer.validate(c, memnet.EXPERIMENT)
  assert len({trainer.group_key(c, memnet.EXPERIMENT) for c in configs}) == 1


@pytest.mark.skipif("num_tasks" not in {f.name for f in dataclasses.fields(experiment.Dataset)},
                    reason="needs the trainer's per-run task selection (Dataset.num_tasks, "
                           "hp['epoch']; issue #5)")
def test_trainer_trains_runs_on_their_own_tasks():
  from gradnoise.sweep import apply_overrides
  base = config(tasks=(1, 2), linear_start_epochs=1)
  base.num_epochs, base.batch_size, base.train.eval_every_epochs = 2, 4, 1
  runs = list(enumerate(apply_overrides(base, {"data.task": t}) for t in (1, 2)))
  data = memnet.load_data(base)
  rows = []
  results = trainer.train_group(memnet.EXPERIMENT, runs, data,
                                trainer.GroupCallbacks(rows.append))
  assert len(rows) == 4 and all(np.isfinite(r["test_error"]) for r in rows)
  assert results[0]["test_loss"] != results[1]["test_loss"]
  assert {k for k in results[0] if not k.startswith("best_")} >= {
      "train_loss", "train_error", "valid_error", "valid_loss", "test_error", "test_loss"}


def train_memnet(c, epochs, seed=0):
  """Test error after ``epochs`` of training on task ``data.task`` outside the trainer, with
  the trainer's optimizer for ``c`` (per-matrix clipping, noise, SGD and its schedule)."""
  data = memnet._data(c)
  task = list(c.data.tasks).index(c.data.task)
  train = {k: jnp.asarray(v[task]) for k, v in data.splits["train"].items()}
  test = {k: jnp.asarray(v[task]) for k, v in data.splits["test"].items()}
  steps = len(train["answers"]) // c.batch_size
  key = jax.random.key(seed)
  params = memnet.init_params(jax.random.fold_in(key, 0), None, hparams(c), gc(c))
  run_hp = {k: jnp.asarray(v) for k, v in trainer.run_hparams(c, memnet.EXPERIMENT).items()}
  tx = trainer.make_optimizer(gc(c), run_hp, jax.random.fold_in(key, 1), steps)

  data_key, noise_key = jax.random.fold_in(key, 2), jax.random.fold_in(key, 3)

  @jax.jit
  def epoch(params, opt_state, e):
    hp = hparams(c, e)
    order = jax.random.permutation(jax.random.fold_in(data_key, e), len(train["answers"]))

    def step(carry, inputs):
      params, opt_state = carry
      indices, step_num = inputs
      batch = {k: v[indices] for k, v in train.items()}
      step_key = jax.random.fold_in(noise_key, step_num)
      grads = jax.grad(lambda p: memnet.loss_fn(p, batch, step_key, hp, gc(c))[0])(params)
      updates, opt_state = tx.update(grads, opt_state, params)
      return (optax.apply_updates(params, updates), opt_state), None

    batches = order[:steps * c.batch_size].reshape(steps, c.batch_size)
    inputs = (batches, e * steps + jnp.arange(steps))
    (params, opt_state), _ = jax.lax.scan(step, (params, opt_state), inputs)
    return params, opt_state

  opt_state = tx.init(params)
  for e in range(epochs):
    params, opt_state = epoch(params, opt_state, jnp.int32(e))
  return float(memnet.eval_fn(params, test, hparams(c, epochs - 1), gc(c))["error"].mean())


@pytest.mark.skipif(not os.path.isdir(REAL_BABI),
                    reason=f"bAbI data not found at {os.path.normpath(REAL_BABI)}")
def test_qa1_reaches_under_5_percent_test_error():
  c = config(path=REAL_BABI, tasks=(1,), linear_start_epochs=0)  # one-stage, as the reference
  c.optimizer.learning_rate = 0.01
  start = time.perf_counter()
  error = train_memnet(c, epochs=15)
  seconds = time.perf_counter() - start
  print(f"qa1 (1k): test error {error:.1%} after 15 epochs in {seconds:.1f} s")
  assert error < 0.05


def finished_run(run, **final):
  return report.Run("wd", run, {}, {}, seed=run, final=final)


def test_best_of_k_picks_the_lowest_training_error():
  runs = [finished_run(0, train_error=0.10, valid_error=0.05, test_error=0.30),
          finished_run(1, train_error=0.02, valid_error=0.20, test_error=0.50),
          finished_run(2, train_error=float("nan"), valid_error=0.01, test_error=0.01),
          finished_run(3, train_error=0.02, valid_error=0.10, test_error=0.40),
          report.Run("wd", 4, {}, {}, seed=4)]  # unfinished
  assert report.select_run(runs, "train_error").run == 1  # the first of the tied lowest
  assert report.select_run(runs, "valid_error").run == 2
  assert report.select_run(runs, "test_accuracy") is None
  accuracy = [finished_run(0, test_accuracy=0.9), finished_run(1, test_accuracy=0.95)]
  assert report.select_run(accuracy, "test_accuracy").run == 1  # higher is better


def test_table2_summary_from_a_work_dir(tmp_path):
  from experiments import babi_table
  header = ("run,data.task,model.linear_start_epochs,noise.schedule,noise.eta,noise.std,seed,"
            "train_error,valid_error,test_error,diverged\n")
  rows = [  # task, linear start, schedule, eta, std, seed, train, valid, test
      (1, 0, "annealed", 0.0, 0.0, 0, 0.10, 0.05, 0.30),
      (1, 0, "annealed", 0.0, 0.0, 1, 0.00, 0.10, 0.50),
      (1, 0, "annealed", 0.0, 0.0, 2, 0.05, 0.20, 0.40),
      (1, 20, "annealed", 1.0, 0.0, 0, 0.02, 0.04, 0.06),
      (2, 20, "annealed", 1.0, 0.0, 0, 0.04, 0.08, 0.10),
      (2, 20, "constant", 1.0, 0.001, 0, 0.01, 0.02, 0.03)]
  text = header + "".join(",".join(map(str, (i, *row, "false"))) + "\n"
                          for i, row in enumerate(rows))
  (tmp_path / "results.csv").write_text(text)
  (tmp_path / "config.json").write_text('{"config": {"noise": {"schedule": "annealed"}}, '
                                        '"sweep": []}')
  table = babi_table.table(babi_table.collect([str(tmp_path)]))
  # qa1 one-stage no noise: means 5.0 / 11.7 / 40.0; the lowest training error (seed 1) has
  # 50% test error, the lowest validation error (seed 0) 30%; MemN2N 0.0, MATLAB run 0.1.
  assert "| qa1 | 5.0 / 11.7 / 40.0 (50.0 / 30.0, k=3) |" in table
  assert table.splitlines()[2].endswith("| 0.0 | 0.1 |")
  # --seeds=2: seeds 0 and 1 only (means 5.0 / 7.5 / 40.0; best by train: seed 1, 50%).
  fewer = babi_table.table(babi_table.collect([str(tmp_path)], max_seeds=2))
  assert "| qa1 | 5.0 / 7.5 / 40.0 (50.0 / 30.0, k=2) |" in fewer
  # Means over tasks: two-stage with annealed noise over qa1 and qa2.
  assert "| two-stage, noise | 2 | 3.0 | 6.0 | 8.0 | 8.0 | 8.0 | 5.9 | 10.8 |" in table
  # The fixed-noise arm (noise.schedule=constant) is its own setting, not in Table 2.
  assert "| two-stage, fixed noise | 1 | 1.0 | 2.0 | 3.0 | 3.0 | 3.0 |  |  | 8.3 | 8.2 |" in table
  # gradnoise.report selects the same way for any sweep.
  rep = report.analyze(report.load_runs([str(tmp_path)]), "test_error", select_by="train_error")
  assert [(a.runs, a.mean, a.selected) for a in rep.arms][0] == (3, pytest.approx(0.4), 0.5)
  assert "| selected by train_error |" in report.to_markdown(rep)
  with pytest.raises(UsageError, match="memnet work dir"):
    (tmp_path / "results.csv").write_text("run,seed,test_accuracy,diverged\n0,0,0.5,false\n")
    babi_table.collect([str(tmp_path)])


def write_archive(path):
  """A tasks_1-20_v1-2.tar.gz of the fixture stories, plus members that must not be
  extracted (outside the release folder, climbing out of it, a link)."""
  with tarfile.open(path, "w:gz") as tar:
    for name in sorted(os.listdir(os.path.join(FIXTURES, "en"))):
      tar.add(os.path.join(FIXTURES, "en", name), f"tasks_1-20_v1-2/en/{name}")
    for name in ("evil.txt", "tasks_1-20_v1-2/../../evil.txt"):
      tar.add(TINY_QA1, name)
    link = tarfile.TarInfo("tasks_1-20_v1-2/en/link.txt")
    link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
    tar.addfile(link)
  return path.read_bytes()


def as_official(monkeypatch, content, urls):
  monkeypatch.setattr(babi_data, "ARCHIVE_URLS", tuple(urls))
  monkeypatch.setattr(babi_data, "ARCHIVE_SIZE", len(content))
  monkeypatch.setattr(babi_data, "ARCHIVE_SHA256", hashlib.sha256(content).hexdigest())


def test_download_fetches_verifies_extracts_and_caches(tmp_path, monkeypatch, mirror):
  folder, url, requested = mirror
  content = write_archive(folder / "tasks_1-20_v1-2.tar.gz")
  as_official(monkeypatch, content, [closed_url(), url + "tasks_1-20_v1-2.tar.gz"])
  monkeypatch.setenv("GRADNOISE_DATA_DIR", str(tmp_path / "data"))
  cache = tmp_path / "data" / "babi"
  data = babi_data.load_babi(babi_data.DOWNLOAD, "en", [1, 2])
  assert data.tasks == (1, 2)
  assert data.description.startswith(f"bAbI en tasks 1,2 from {cache}/tasks_1-20_v1-2/en:")
  assert sorted(os.listdir(cache)) == ["tasks_1-20_v1-2", "tasks_1-20_v1-2.tar.gz"]
  assert sorted(os.listdir(cache / "tasks_1-20_v1-2" / "en")) == sorted(
      n.replace(".story", ".txt") for n in os.listdir(os.path.dirname(TINY_QA1)))
  assert not (tmp_path / "evil.txt").exists() and not (cache / "evil.txt").exists()
  assert len(requested) == 1
  # Cached: no network at all.
  monkeypatch.setattr(babi_data, "ARCHIVE_URLS", (closed_url(),))
  assert babi_data.load_babi(babi_data.DOWNLOAD, "en", [1]).tasks == (1,)
  assert len(requested) == 1


def test_an_archive_copied_into_the_cache_is_extracted_without_network(tmp_path, monkeypatch):
  cache = tmp_path / "data" / "babi"
  cache.mkdir(parents=True)
  content = write_archive(cache / "tasks_1-20_v1-2.tar.gz")
  as_official(monkeypatch, content, [closed_url()])
  monkeypatch.setenv("GRADNOISE_DATA_DIR", str(tmp_path / "data"))
  assert babi_data.load_babi(babi_data.DOWNLOAD, "en", [1]).tasks == (1,)
  assert sorted(os.listdir(cache)) == ["tasks_1-20_v1-2", "tasks_1-20_v1-2.tar.gz"]


def test_download_rejects_a_damaged_archive_and_caches_nothing(tmp_path, monkeypatch, mirror):
  folder, url, _ = mirror
  archive = folder / "tasks_1-20_v1-2.tar.gz"
  content = write_archive(archive)
  as_official(monkeypatch, content, [url + "tasks_1-20_v1-2.tar.gz"])
  archive.write_bytes(content[:-1] + bytes([content[-1] ^ 1]))
  monkeypatch.setenv("GRADNOISE_DATA_DIR", str(tmp_path / "data"))
  with pytest.raises(UsageError, match=r"data\.path: could not download tasks_1-20_v1-2"
                     r"\.tar\.gz \(http://.*: rejected, SHA-256 [0-9a-f]{64}, expected"):
    babi_data.load_babi(babi_data.DOWNLOAD, "en", [1])
  assert not (tmp_path / "data").exists()


def test_download_offline_fails_at_once_with_one_line(tmp_path, monkeypatch):
  urls = [closed_url() + "tasks_1-20_v1-2.tar.gz", closed_url() + "babi.tar.gz"]
  monkeypatch.setattr(babi_data, "ARCHIVE_URLS", tuple(urls))
  monkeypatch.setenv("GRADNOISE_DATA_DIR", str(tmp_path / "data"))
  start = time.monotonic()
  with pytest.raises(UsageError) as error:
    babi_data.load_babi(babi_data.DOWNLOAD, "en", [1])
  assert time.monotonic() - start < 10
  cache = tmp_path / "data" / "babi"
  assert str(error.value) == (
      f"data.path: could not download tasks_1-20_v1-2.tar.gz ({urls[0]}: Connection "
      f"refused; {urls[1]}: Connection refused); without network, download "
      f"tasks_1-20_v1-2.tar.gz elsewhere and put it in {cache}, or extract it and set "
      "data.path to its tasks_1-20_v1-2 folder")
  assert error.value.field == "data.path"
  assert not (tmp_path / "data").exists()


def test_bad_tasks_are_refused_before_any_download(monkeypatch, mirror):
  _, url, requested = mirror
  monkeypatch.setattr(babi_data, "ARCHIVE_URLS", (url + "tasks_1-20_v1-2.tar.gz",))
  with pytest.raises(UsageError, match=r"data\.tasks=\[21\] is invalid"):
    babi_data.load_babi(babi_data.DOWNLOAD, "en", [21])
  with pytest.raises(UsageError, match=r"data\.babi_set='fr' is unknown"):
    babi_data.load_babi(babi_data.DOWNLOAD, "fr", [1])
  assert not requested


def test_os_errors_name_the_file_and_the_reason(tmp_path):
  (tmp_path / "file").write_text("")
  with pytest.raises(UsageError, match=re.escape(
      f"data.path: {tmp_path}/file/en is not a folder (Not a directory)")):
    babi_data.load_babi(str(tmp_path / "file"), "en", [1])
  with pytest.raises(UsageError, match=re.escape(
      f"data.path: {tmp_path}/en is not a folder (No such file or directory)")):
    babi_data.load_babi(str(tmp_path), "en", [1])
  (tmp_path / "en").mkdir()
  (tmp_path / "en" / "qa1_x_train.txt").mkdir()
  (tmp_path / "en" / "qa1_x_test.txt").write_text("1 A b.\n2 C d? \te\t1\n")
  with pytest.raises(UsageError, match=re.escape(
      f"data.path: cannot read bAbI file {tmp_path}/en/qa1_x_train.txt (Is a directory)")):
    babi_data.load_babi(str(tmp_path), "en", [1])
  (tmp_path / "en" / "qa1_x_train.txt").rmdir()
  (tmp_path / "en" / "qa1_x_train.txt").write_bytes(b"1 A \xff.\n")
  with pytest.raises(UsageError, match=r"cannot read bAbI file .*qa1_x_train\.txt \("
                     r"'utf-8' codec can't decode"):
    babi_data.load_babi(str(tmp_path), "en", [1])


def test_linear_start_ends_on_a_validation_plateau():
  c = config(linear_start_epochs=100, linear_start_patience=2)
  hp = {**hparams(c, epoch=3), "task": jnp.float32(0)}
  extra = memnet.init_state(None, None, hp, gc(c))
  assert not memnet._use_softmax({**hp, **extra})
  for loss, softmax_after in ((1.0, False), (0.8, False), (0.9, False), (0.85, True)):
    extra = memnet.after_eval(extra, {"valid_loss": jnp.float32(loss)}, {**hp, **extra}, gc(c))
    assert bool(extra["softmax_on"]) == softmax_after
  assert memnet._use_softmax({**hp, **extra})
  # Patience 0: only the epoch count ends linear start.
  c0 = config(linear_start_epochs=100, linear_start_patience=0)
  extra0 = memnet.init_state(None, None, hp, gc(c0))
  for loss in (1.0, 2.0, 3.0):
    extra0 = memnet.after_eval(extra0, {"valid_loss": jnp.float32(loss)}, hp, gc(c0))
  assert not memnet._use_softmax({**hp, **extra0})
