"""NRAM experiment: modules, READ/WRITE, hand-set programs, stopping-time loss, curriculum,
task generators, configs and real training."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from configs import nram as configs
from experiments import nram
from experiments import nram_tasks as tasks
from gradnoise import sweep, trainer
from gradnoise.errors import UsageError

M = 7
BIG = 100.0  # a logit that makes a softmax one-hot in float32
EPS = jnp.float32(1e-10)
NO_CLIP = jnp.float32(1e9)
EPOCHS = 10  # of 64 steps (training test)

# The integer function of every module but READ/WRITE's memory effect, mod M.
INTEGER = {
    "zero": lambda a, b, m: 0, "one": lambda a, b, m: 1, "two": lambda a, b, m: 2,
    "inc": lambda a, b, m: (a + 1) % m, "dec": lambda a, b, m: (a - 1) % m,
    "add": lambda a, b, m: (a + b) % m, "sub": lambda a, b, m: (a - b) % m,
    "less_than": lambda a, b, m: int(a < b), "less_or_equal": lambda a, b, m: int(a <= b),
    "equal": lambda a, b, m: int(a == b), "min": lambda a, b, m: min(a, b),
    "max": lambda a, b, m: max(a, b), "write": lambda a, b, m: b,
}
ARITY = dict(nram.MODULES)


def run_module(name, a, b, write_returns="value"):
  """A module's output on argument distributions a, b [N, M] (memory zero)."""
  mem = jnp.zeros(a.shape + (a.shape[-1],))
  return nram.apply_module(name, [a, b][:ARITY[name]], mem, write_returns)[0]


def test_module_order_is_the_papers():
  assert [name for name, _ in nram.MODULES] == [
      "read", "zero", "one", "two", "inc", "add", "sub", "dec", "less_than",
      "less_or_equal", "equal", "min", "max", "write"]


@pytest.mark.parametrize("name", sorted(INTEGER))
def test_module_on_one_hot_inputs_is_its_integer_function(name):
  a, b = np.meshgrid(np.arange(M), np.arange(M), indexing="ij")
  a, b = a.ravel(), b.ravel()
  out = np.asarray(run_module(name, jax.nn.one_hot(a, M), jax.nn.one_hot(b, M)))
  expected = [INTEGER[name](int(x), int(y), M) for x, y in zip(a, b)]
  np.testing.assert_allclose(out, np.eye(M)[expected], atol=1e-6)


@pytest.mark.parametrize("name", sorted(INTEGER))
def test_module_on_distributions_is_the_sum_over_argument_pairs(name):
  rng = np.random.default_rng(0)
  a, b = rng.dirichlet(np.ones(M), 5), rng.dirichlet(np.ones(M), 5)
  hits = np.zeros((M, M, M))  # [a, b, c] = [m(a, b) = c]
  for x in range(M):
    for y in range(M):
      hits[x, y, INTEGER[name](x, y, M)] = 1.0
  expected = np.einsum("na,nb,abc->nc", a, b, hits)
  out = run_module(name, jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32))
  np.testing.assert_allclose(out, expected, atol=1e-6)


def test_write_can_return_zero():
  a = jax.nn.one_hot(jnp.array([3, 5]), M)
  np.testing.assert_allclose(run_module("write", a, a, "zero"), np.eye(M)[[0, 0]])


def test_read_and_write_follow_their_formulas():
  rng = np.random.default_rng(1)
  mem = rng.dirichlet(np.ones(M), (2, M)).astype(np.float32)  # [batch, cell, value]
  p, a = (rng.dirichlet(np.ones(M), 2).astype(np.float32) for _ in range(2))
  for n in range(2):  # READ: Mem^T p; WRITE: Mem <- (J - p) J^T . Mem + p a^T
    np.testing.assert_allclose(nram.read(mem, p)[n], mem[n].T @ p[n], atol=1e-6)
    expected = (np.outer(1 - p[n], np.ones(M)) * mem[n] + np.outer(p[n], a[n]))
    np.testing.assert_allclose(nram.write(mem, p, a)[n], expected, atol=1e-6)
  out, new_mem = nram.apply_module("read", [jnp.asarray(p)], jnp.asarray(mem), "value")
  np.testing.assert_array_equal(new_mem, mem)  # READ leaves the memory alone
  one_hot = nram.write(mem, np.eye(M)[[2, 2]], a)  # a sharp address replaces one cell
  np.testing.assert_allclose(one_hot[:, 2], a, atol=1e-6)
  np.testing.assert_allclose(np.delete(one_hot, 2, 1), np.delete(mem, 2, 1), atol=1e-6)


def test_clip_gradient_and_renormalize_are_identities_forward_only():
  x = jnp.array([1.0, 3.0])
  grad = jax.grad(lambda x: jnp.sum(nram.clip_gradient(x, jnp.float32(2.0)) * 5.0 * x))(x)
  np.testing.assert_allclose(grad, [2.0 + 5.0, 2.0 + 15.0])  # clipped path + direct path
  np.testing.assert_allclose(nram.renormalize(x), [0.25, 0.75])
  np.testing.assert_allclose(jax.grad(lambda x: nram.renormalize(x) @ jnp.array([1., 2.]))(x),
                             [1.0, 2.0])
  np.testing.assert_allclose(nram.safe_log(jnp.array([0.0, 1.0]), EPS), [np.log(1e-10), 0.0])


# ----------------------------------------------------------------------------------------
# Hand-set programs.


def flatten(args, registers, finish):
  """The flat controller output of a circuit (inverse of nram.split_logits)."""
  return jnp.concatenate([a.reshape(-1) for a in args] + [registers.reshape(-1),
                                                          jnp.array([finish])])


def program(num_registers, choose=None, assign=None):
  """Flat logits: module name -> argument candidates, register -> candidate (others keep
  their value); candidates are registers 0..R-1, then module outputs R + q. Never finishes
  (the stop is forced at T)."""
  modules = nram.module_list(1)
  outputs = {name: num_registers + q for q, (name, _) in enumerate(modules)}
  args = []
  for q, (name, arity) in enumerate(modules):
    logits = np.zeros((arity, num_registers + q), np.float32)
    for slot, candidate in enumerate((choose or {}).get(name, ())):
      logits[slot, candidate if isinstance(candidate, int) else outputs[candidate]] = BIG
    args.append(jnp.asarray(logits))
  regs = np.zeros((num_registers, num_registers + len(modules)), np.float32)
  for r in range(num_registers):
    target = (assign or {}).get(r, r)
    regs[r, target if isinstance(target, int) else outputs[target]] = BIG
  flat = flatten(args, jnp.asarray(regs), -BIG)
  split = nram.split_logits(flat, num_registers, 1)
  assert [a.shape for a in split.args] == [a.shape for a in args]
  assert flat.shape == (nram.output_size(num_registers, 1),)
  return flat


@functools.partial(jax.jit, static_argnums=(0, 3, 4, 5))
def _hand_program(controller, carry, examples, timesteps, registers, discrete):
  trace = nram.execute(controller, carry, examples["memory"], timesteps, registers, 1,
                       "value", discrete, EPS, NO_CLIP)
  target = examples["target"].astype(jnp.int32)
  nll = nram.expected_nll(trace.finish, nram.cell_nll(trace.memories, target,
                                                      examples["mask"], EPS))
  wrong = nram.cell_errors(nram.scored_memory(trace, "expected"), target, examples["mask"])
  return wrong, nll


def run_hand_program(controller, carry, examples, timesteps, registers, discrete):
  """Per example: wrong output cells and the stopping-time loss of a hand-set controller."""
  wrong, nll = _hand_program(controller, carry, examples, timesteps, registers, discrete)
  return np.asarray(wrong), np.asarray(nll)


def access_controller(carry, p_zero):
  """Step 1 (r0 = 0): r0 <- INC(READ(r0)) = k + 1 (and WRITE(ZERO, READ) rewrites k: every
  circuit writes). Then: WRITE(ZERO, READ(r0)) = A[k]."""
  first = program(2, {"read": [0], "inc": ["read"], "write": ["zero", "read"]}, {0: "inc"})
  then = program(2, {"read": [0], "write": ["zero", "read"]})
  return carry, jnp.where(p_zero[:, :1] > 0.5, first, then)


def listk_controller(t, p_zero):
  """r0 the node address, r1 the hops left, r2 a flag. t=0: r0 <- READ(r0) = head,
  r1 <- 1; t=1: r1 <- READ(r1) = k; then while r1 != 0: r0 <- READ(r0) (next),
  r1 <- DEC(r1); then r0 <- INC(r0) (the value cell), r2 <- 1; then
  WRITE(TWO, READ(r0)). Before that every circuit writes 2 to cell 2, which holds 2."""
  keep = ["two", "two"]
  head = program(4, {"read": [0], "write": keep}, {0: "read", 1: "one"})
  hops = program(4, {"read": [1], "write": keep}, {1: "read"})
  follow = program(4, {"read": [0], "dec": [1], "write": keep}, {0: "read", 1: "dec"})
  to_value = program(4, {"inc": [0], "write": keep}, {0: "inc", 2: "one"})
  answer = program(4, {"read": [0], "write": ["two", "read"]})
  done, flag = p_zero[:, 1:2] > 0.5, p_zero[:, 2:3] > 0.5
  loop = jnp.where(done, jnp.where(flag, to_value, answer), follow)
  return t + 1, jnp.where(t == 0, head, jnp.where(t == 1, hops, loop))


@pytest.mark.parametrize("discrete", [False, True])
def test_hand_set_controller_solves_access(discrete):
  rng = np.random.default_rng(0)
  for length in (1, 4, 10):
    examples = tasks.examples("access", length, 64, 12, rng)
    wrong, nll = run_hand_program(access_controller, (), examples, 3, 2, discrete)
    assert np.all(wrong == 0) and np.all(nll < 1e-5), (length, wrong, nll)


def test_hand_set_controller_solves_listk():
  rng = np.random.default_rng(0)
  for length in (1, 3, 6):
    examples = tasks.examples("listk", length, 64, 16, rng)
    wrong, nll = run_hand_program(listk_controller, jnp.int32(0), examples, 9, 4, False)
    assert np.all(wrong == 0) and np.all(nll < 1e-5), (length, wrong, nll)
  # One step short of the longest walk: the examples with k = 5 hops stay wrong unless
  # their answer is the 2 that cell 2 holds.
  wrong, _ = run_hand_program(listk_controller, jnp.int32(0), examples, 8, 4, False)
  k, answer = examples["memory"][:, 1], examples["target"][:, 2]
  assert np.all(wrong[k < 5] == 0) and np.all(wrong[(k == 5) & (answer != 2)] == 1)
  assert np.sum((k == 5) & (answer != 2)) > 0


# ----------------------------------------------------------------------------------------
# Loss, curriculum, tasks.


def test_stopping_time_loss_by_hand():
  finish = jnp.array([[0.2], [0.5], [0.9]])  # f_t, T = 3
  # p_1 = 0.2, p_2 = 0.8 * 0.5 = 0.4, p_3 = 1 - 0.2 - 0.4 = 0.4 (the forced stop)
  np.testing.assert_allclose(nram.stopping_probabilities(finish)[:, 0], [0.2, 0.4, 0.4],
                             rtol=1e-6)
  nll = jnp.array([[1.0], [2.0], [3.0]])
  np.testing.assert_allclose(nram.expected_nll(finish, nll), [0.2 + 0.8 + 1.2], rtol=1e-6)
  # cell_nll: -sum over masked cells of log Mem[i, y_i]; log clipped at eps.
  memories = jnp.asarray([[[[0.5, 0.5], [0.0, 1.0], [0.25, 0.75]]]])  # [T=1, B=1, 3, 2]
  got = nram.cell_nll(memories, jnp.array([[0, 0, 1]]), jnp.array([[True, True, False]]), EPS)
  np.testing.assert_allclose(got, [[-np.log(0.5) - np.log(1e-10)]], rtol=1e-6)
  expected = 0.5 * memories[0] + 0.5 * jnp.flip(memories[0], -1)
  trace = nram.Trace(jnp.array([[0.5], [0.3]]),
                     jnp.concatenate([memories, jnp.flip(memories, -1)]), jnp.zeros(1))
  np.testing.assert_allclose(nram.scored_memory(trace, "expected"), expected)
  np.testing.assert_allclose(nram.scored_memory(trace, "final"), jnp.flip(memories, -1)[0])


def test_curriculum_proportions():
  level, top, n = 3, 8, 200_000
  lengths = np.asarray(nram.sample_lengths(jax.random.key(0), n, jnp.int32(level), top))
  # 10% uniform on [1, top]; 25% uniform on [1, D + e]; 65% D + e; e ~ Geom(1/2) on {0..},
  # D + e capped at top.
  near = np.zeros(top + 1)
  for e in range(64):
    near[min(level + e, top)] += 0.5 ** (e + 1)
  upto = np.zeros(top + 1)
  for d in range(1, top + 1):
    upto[1:d + 1] += near[d] / d
  every = np.r_[0.0, np.full(top, 1.0 / top)]
  expected = 0.10 * every + 0.25 * upto + 0.65 * near
  counts = np.bincount(lengths, minlength=top + 1)
  assert counts[0] == 0 and counts.sum() == n
  assert stats.chisquare(counts[1:], expected[1:] * n).pvalue > 1e-3
  np.testing.assert_allclose(counts / n, expected, atol=0.005)


def test_curriculum_advances_after_a_good_window():
  config = configs.get_config("small")
  gc = trainer.group_config(config, nram.EXPERIMENT)
  hp = {"curriculum_threshold": jnp.float32(0.05)}
  extra = nram.init_state(None, None, hp, gc)
  good = {"curriculum_errors": jnp.float32(1.0), "curriculum_cells": jnp.float32(100.0)}
  bad = {"curriculum_errors": jnp.float32(10.0), "curriculum_cells": jnp.float32(100.0)}
  for _ in range(config.curriculum.window):
    extra = nram.after_step(extra, bad, hp, gc)
  assert int(extra["level"]) == 1 and int(extra["window_steps"]) == 0
  for _ in range(config.curriculum.window):
    extra = nram.after_step(extra, good, hp, gc)
  assert int(extra["level"]) == 2 and int(extra["step"]) == 2 * config.curriculum.window


def follow_list(memory):
  """(answer cell, answer) of a ListK memory by walking the pointers."""
  address = memory[0]
  for _ in range(memory[1]):
    address = memory[address]
  return 2, memory[address + 1]


@pytest.mark.parametrize("task", tasks.TASKS)
def test_generators(task):
  rng = np.random.default_rng(3)
  size = 16
  for length in (1, 2, tasks.max_length(task, size)):
    ex = tasks.examples(task, length, 200, size, rng)
    memory, target, mask = (ex[k].astype(int) for k in ("memory", "target", "mask"))
    assert memory.min() >= 0 and memory.max() < size
    np.testing.assert_array_equal(np.where(mask, memory, 0) * 0, 0)
    np.testing.assert_array_equal(np.where(mask, 0, target), np.where(mask, 0, memory))
    for mem, tgt, msk in zip(memory, target, mask):
      if task == "access":
        assert np.flatnonzero(msk).tolist() == [0] and tgt[0] == mem[mem[0] + 1]
        assert mem[0] < length and mem[length + 1] == 0 and np.all(mem[1:length + 1] > 0)
      elif task == "increment":
        assert np.flatnonzero(msk).tolist() == list(range(length))
        np.testing.assert_array_equal(tgt[:length], (mem[:length] + 1) % size)
      else:
        assert np.flatnonzero(msk).tolist() == [2] and mem[2] == 2 and mem[1] < length
        cell, value = follow_list(mem)
        assert tgt[cell] == value
        nodes, address = 0, mem[0]  # the list has ``length`` nodes and ends in NULL
        while address:
          nodes, address = nodes + 1, mem[address]
        assert nodes == length
  with pytest.raises(ValueError, match="does not fit"):
    tasks.examples(task, tasks.max_length(task, size) + 1, 1, size, rng)


def test_training_pool_rows_have_their_length():
  pool = tasks.training_pool("increment", 5, 10, 8, np.random.default_rng(0))
  assert pool["memory"].shape == (10, 5, 8) and pool["memory"].dtype == np.int8
  np.testing.assert_array_equal(pool["mask"].sum(2), np.tile(np.arange(1, 6), (10, 1)))


# ----------------------------------------------------------------------------------------
# Configs and training.


@pytest.mark.parametrize("variant, num_runs", [("table5", 600), ("small", 8)])
def test_sweeps_are_one_compile_group_with_paired_seeds(variant, num_runs):
  config = configs.get_config(variant)
  entries = configs.get_sweep(variant)
  runs = [sweep.apply_overrides(config, o) for o in entries]
  assert len(runs) == num_runs
  for run in runs:
    trainer.validate(run, nram.EXPERIMENT)
  assert len({trainer.group_key(run, nram.EXPERIMENT) for run in runs}) == 1
  arms = {}
  for o in entries:
    setting = tuple(sorted((k, v) for k, v in o.items() if k not in ("seed", "noise.eta")))
    arms.setdefault((setting, o["noise.eta"]), set()).add(o["seed"])
  assert {eta for _, eta in arms} == {0.0, 0.3}
  assert len({frozenset(s) for s in arms.values()}) == 1  # the same seeds in every arm


def test_validate_names_bad_fields():
  config = configs.get_config("small")
  for overrides, field in (({"data.max_length": 7}, "data.max_length"),
                           ({"data.large_memory": 8, "data.large_length": 4}, "data.large_memory"),
                           ({"curriculum.start_level": 5}, "curriculum.start_level"),
                           ({"model.score": "best"}, "model.score")):
    with pytest.raises(UsageError, match=field):
      trainer.validate(sweep.apply_overrides(config, overrides), nram.EXPERIMENT)


def test_mlp_controller_and_repeats_run():
  config = sweep.apply_overrides(configs.get_config("small"), {
      "model.controller": "mlp", "model.repeats": 2, "model.hidden": 8})
  gc = trainer.group_config(config, nram.EXPERIMENT)
  hp = {k: jnp.asarray(v) for k, v in nram.hparams(config).items()}
  params = nram.init_params(jax.random.key(0), None, hp, gc)
  assert params["output"]["w"].shape == (8, nram.output_size(4, 2))
  memory = tasks.examples("access", 3, 5, 8, np.random.default_rng(0))["memory"]
  trace = nram.run_model(params, jnp.asarray(memory), 4, hp, gc)
  assert trace.memories.shape == (4, 5, 8, 8)
  np.testing.assert_allclose(jnp.sum(trace.memories, -1), 1.0, atol=1e-5)
  np.testing.assert_allclose(jnp.sum(nram.stopping_probabilities(trace.finish), 0), 1.0,
                             atol=1e-6)


def test_table_counts_solved_runs_and_discordant_pairs(tmp_path):
  from experiments import nram_table
  low, high = nram_table.wilson(1, 100)  # Wilson (1927): 1/100 -> [0.18%, 5.45%]
  assert low == pytest.approx(0.00177, abs=1e-4) and high == pytest.approx(0.0545, abs=1e-4)
  rows = ["run,optimizer.learning_rate,noise.eta,seed,test_error,best_test_error,"
          "large_error,test_discrete_error,diverged"]
  solved = {(0.0, 0): 0.0, (0.0, 1): 0.5, (0.3, 0): 0.0, (0.3, 1): 0.0}
  for i, ((eta, seed), best) in enumerate(solved.items()):
    rows.append(f"{i},0.01,{eta},{seed},{best},{best},0.5,0.5,false")
  (tmp_path / "results.csv").write_text("\n".join(rows) + "\n")
  text = nram_table.table(nram_table.read_runs([str(tmp_path)]))
  assert "| optimizer.learning_rate=0.01 | 0 | 2 | 50.0 [" in text
  assert "| optimizer.learning_rate=0.01 | 0.3 | 2 | 100.0 [" in text
  assert "| optimizer.learning_rate=0.01 | 0.3 | 2 | 1 | 1 | 0 | 1 |" in text


def tiny_access_config():
  """Access on arrays of up to 3 values in 6 cells, 3 timesteps, 2 registers."""
  return sweep.apply_overrides(configs.get_config("small"), {
      "batch_size": 16, "data.pool_size": 1024, "data.test_examples": 128,
      "data.memory_size": 6, "data.max_length": 3, "data.large_memory": 8,
      "data.large_length": 5, "data.large_timesteps": 4, "model.timesteps": 3,
      "model.hidden": 16, "model.registers": 2, "curriculum.window": 50})


def test_learns_access_for_at_least_one_seed():
  """The trainer's vmapped program (clip -> noise -> Adam, curriculum in per-run state)
  on 8 seeds with the small variant's noise (eta 0.3): after 640 steps some run has 0%
  test error on Access (measured: 6 of the 8)."""
  config = tiny_access_config()
  data = nram.EXPERIMENT.load_data(config)
  program = trainer.build_program(nram.EXPERIMENT, config, data.num_train)
  runs = [sweep.apply_overrides(config, {"seed": s}) for s in range(8)]
  hp = trainer.stack_hparams([trainer.run_hparams(r, nram.EXPERIMENT) for r in runs], 8)
  train = {k: jnp.asarray(v) for k, v in data.train.items()}
  evals = trainer.eval_batches(data, config.train.eval_batch_size)
  state = program.init(hp, train)
  for epoch in range(EPOCHS):
    state, metrics = program.train_epoch(state, hp, train, np.int32(epoch))
  results, _ = program.evaluate(state, hp, evals, np.int32(EPOCHS - 1))
  assert np.all(np.asarray(metrics["state_level"]) >= 1)
  assert np.min(results["test_error"]) == 0.0, results["test_error"]
