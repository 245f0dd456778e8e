"""Experiment 4 of Neelakantan et al. (2015): Neural Random-Access Machines on ListK (Table 5).

Model and training follow Kurach, Andrychowicz & Sutskever (2015), "Neural Random-Access
Machines", arXiv:1511.06392 (sec. 3-4, App. A-C); Neelakantan et al. (sec. 4.4) train the
LSTM-controlled NRAM on the k-th element of a linked list with and without annealed
gradient noise (eta 0.3, gamma 0.55) and count the runs that reach 100% accuracy
(Table 5). Written in plain JAX: the machine is a scan of fuzzy circuits.

Machine (sec. 3.1-3.3). Every integer is a distribution over {0..M-1}; M is both the
memory size and the integer range. R registers r [R, M] start at the one-hot of 0; the
memory Mem [M, M] (Mem[i, j] = P(cell i holds j)) starts as the one-hot input. A timestep
is one circuit:
  1. the controller reads P(r_i = 0) for every register and emits logits;
  2. the Q modules run in the fixed order of ``MODULES`` (repeated ``model.repeats``
     times); module q's arguments are A = softmax(a_q)^T [r_1..r_R, o_1..o_{q-1}] (and B
     likewise), o_q = m_q(A, B), lifted to distributions under independent arguments,
     P(m(A, B) = c) = sum_{a,b} P(A=a) P(B=b) [m(a, b) = c]  (sec. 3.1, eq. 2);
  3. every register becomes softmax(c_i)^T [r_1..r_R, o_1..o_Q];
  4. the finish probability f_t = sigmoid(x_t).
The modules are computed in closed forms (not from the eq. 2 double sum): INC/DEC roll,
the comparisons use cumulative sums, MIN/MAX the products of survival/distribution
functions; ADD/SUB (circular convolution/correlation) are one product of the outer
product a b^T with a constant 0/1 matrix (see ``_pairs``). The controller emits
logits only for the arguments a module uses (constants none, READ/INC/DEC one), as the
DENN-LITE reimplementation; the paper has every module take two.

Controller (sec. 3.2): an LSTM with one feed-forward ReLU layer between its input and the
cells (``model.controller = "lstm"``, the GN paper's choice), or an MLP with two ReLU
hidden layers (``"mlp"``, no memory between steps); all hidden layers ``model.hidden``
wide; linear maps from the last hidden layer to all logits. Weights are N(0, s^2/fan_in)
with s = ``model.init_scale``, biases 0 except the LSTM forget gate (1) and the finish
logit (``model.finish_bias``).

Loss (sec. 3.3): p_t = f_t prod_{i<t}(1 - f_i) for t < T and p_T = 1 - sum_{t<T} p_t;
L = -sum_t p_t sum_{i in out} log max(Mem_t[i, y_i], eps)  (the expected NLL over stopping
times; mean over the batch), minus the entropy bonus.

Training tricks (sec. 4.1):
- C1: the gradient w.r.t. the registers, the memory and the controller's logits is clipped
  to [-C1, C1] coordinate-wise after every timestep (an identity with a custom VJP,
  ``clip_gradient``). C2 is the trainer's global-norm clipping (``clip.norm``); the
  trainer adds the gradient noise after it.
- Renormalisation: every selection distribution, module output and new register is divided
  by its sum in the forward pass; the backward pass treats this as the identity.
- Entropy bonus: coeff_t * (sum over timesteps of the mean entropy of a circuit's selection
  distributions, mean over the batch) is subtracted from the loss, coeff_t =
  ``entropy.start`` * ``entropy.decay`` ** t, t = training steps so far.
- Curriculum (App. B, Zaremba & Sutskever 2014): with the current level D, every example
  draws its length: 10% uniform on [1, D_max], 25% uniform on [1, D + e], 65% D + e, with
  e ~ Geometric(1/2) on {0, 1, ...} and D + e capped at D_max. Every
  ``curriculum.window`` steps, if the cell error (below) of that window's training
  examples with length <= D was below ``curriculum.threshold``, D grows by one.

Metrics: the scored memory is argmaxed per cell; the error of an example is the fraction of
its output cells that are wrong (sec. 4). ``eval_fn`` reports ``error`` with soft
execution and ``discrete_error`` with discretised execution (sec. 3.4: every softmax
replaced by a one-hot argmax), on ``test`` (``data.max_length``, M cells, T steps) and
``large`` (``data.large_length``, ``data.large_memory`` cells, ``data.large_timesteps``
steps; the controller does not depend on M). A run is solved when ``test_error`` is 0.

Data: a fixed training pool generated in ``load_data`` from ``data.seed`` (no files):
every entry holds one example of each length 1..D_max (``nram_tasks.training_pool``), so
the curriculum picks lengths per example inside ``loss_fn`` from the step's key, as
experiments/neural_gpu.py. The test sets come from the same generator after the pool.

Choices where the papers are silent (UNCONFIRMED, each a config field):
- R (``model.registers``), the hidden width (``model.hidden``), module repeats
  (``model.repeats``), T (``model.timesteps``), M (``data.memory_size``), C1
  (``model.grad_clip``), eps (``model.log_eps``), the entropy schedule (``entropy.*``),
  the curriculum's threshold/window (``curriculum.*``), batch size and learning rate:
  values in configs/nram.py.
- WRITE's return value (``model.write_returns``): "value" returns its argument a (the
  transcription of App. C), "zero" the constant 0 (DENN-LITE).
- Which memory is scored (``model.score``): "expected" = sum_t p_t Mem_t, the memory the
  stopping distribution expects (default: a machine that stops early and then garbles the
  tape is not counted as right), or "final" = Mem_T, as the reimplementations.
- The ListK difficulty is the list length n (k uniform below n); the test set is at the
  largest training length; layout details in experiments/nram_tasks.py.
- Fixed in code (documented above): where C1 clips (registers, memory, logits, once per
  timestep), where renormalisation applies, the entropy bonus over the selection
  distributions only (not f_t) and as a mean per circuit, e counting failures (so P(e=0) =
  1/2), the curriculum judged on the training batches' cell error, the initial weights,
  and a finish logit bias (``model.finish_bias``, -2 in the configs: f = 0.12 at first).
"""

from __future__ import annotations

import functools
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from experiments import curriculum, nram_tasks
from gradnoise import experiment, fields
from gradnoise.errors import UsageError

Params = dict[str, Any]
# (name, number of arguments) in the order of Kurach et al., sec. 3.1 / App. C.
MODULES = (("read", 1), ("zero", 0), ("one", 0), ("two", 0), ("inc", 1), ("add", 2),
           ("sub", 2), ("dec", 1), ("less_than", 2), ("less_or_equal", 2), ("equal", 2),
           ("min", 2), ("max", 2), ("write", 2))
CURRICULUM_ALL, CURRICULUM_UPTO = 0.10, 0.25  # App. B; the remaining 0.65 draw D + e
FORGET_BIAS = 1.0


# ----------------------------------------------------------------------------------------
# Gradient tricks (sec. 4.1).


@jax.custom_vjp
def clip_gradient(x: jax.Array, limit: jax.Array) -> jax.Array:
  """The identity; its backward pass clips every cotangent coordinate to [-limit, limit]
  (C1, Kurach et al. sec. 4.1)."""
  return x


def _clip_fwd(x, limit):
  return x, limit


def _clip_bwd(limit, g):
  return jnp.clip(g, -limit, limit), jnp.zeros_like(limit)


clip_gradient.defvjp(_clip_fwd, _clip_bwd)


def renormalize(p: jax.Array) -> jax.Array:
  """p / sum(p) over the last axis in the forward pass, the identity in the backward pass
  (Kurach et al. sec. 4.1)."""
  return p + jax.lax.stop_gradient(p / jnp.sum(p, -1, keepdims=True) - p)


def safe_log(x: jax.Array, eps: jax.Array) -> jax.Array:
  """log(max(x, eps)) (Kurach et al. sec. 4.1)."""
  return jnp.log(jnp.maximum(x, eps))


# ----------------------------------------------------------------------------------------
# Modules on distributions [..., M] (sec. 3.1, App. C); ``mem`` is [..., M, M].


def read(mem: jax.Array, p: jax.Array) -> jax.Array:
  """READ(p) = Mem^T p: the value distribution at the fuzzy address p."""
  return jnp.einsum("...i,...ij->...j", p, mem)


def write(mem: jax.Array, p: jax.Array, a: jax.Array) -> jax.Array:
  """WRITE(p, a): Mem <- (J - p) J^T . Mem + p a^T, i.e. row i becomes
  (1 - p_i) Mem[i] + p_i a."""
  return (1.0 - p)[..., :, None] * mem + p[..., :, None] * a[..., None, :]


def constant(value: int, like: jax.Array) -> jax.Array:
  """The one-hot of ``value`` with the shape of ``like``."""
  return jax.nn.one_hot(jnp.full(like.shape[:-1], value), like.shape[-1], dtype=like.dtype)


def inc(a: jax.Array) -> jax.Array:
  """(a + 1) mod M: P(c) = P(a = c - 1)."""
  return jnp.roll(a, 1, -1)


def dec(a: jax.Array) -> jax.Array:
  """(a - 1) mod M: P(c) = P(a = c + 1)."""
  return jnp.roll(a, -1, -1)


def _sum_table(m: int, sign: int) -> np.ndarray:
  """table[x * m + y, c] = [(x + sign * y) mod m = c]: [m^2, m] (float32)."""
  x, y = np.divmod(np.arange(m * m), m)
  return np.eye(m, dtype=np.float32)[(x + sign * y) % m]


def _pairs(a: jax.Array, b: jax.Array, sign: int) -> jax.Array:
  """P(c) = sum_{x,y} a[x] b[y] [(x + sign * y) mod M = c], as the outer product times a
  constant 0/1 matrix [M^2, M]: O(M^3) work where a gather of b (the circulant) is O(M^2),
  but the gather's backward pass is a scatter: at M = 24 and 8 x 512 rows, forward +
  backward took 26 ms this way against 59 ms with the gather on XLA:CPU (measured; the
  gather won at 1 x 512 rows, 0.24 ms against 2.3 ms)."""
  m = a.shape[-1]
  outer = (a[..., :, None] * b[..., None, :]).reshape(a.shape[:-1] + (m * m,))
  return outer @ _sum_table(m, sign)


def add(a: jax.Array, b: jax.Array) -> jax.Array:
  """(a + b) mod M: the circular convolution P(c) = sum_x a[x] b[(c - x) mod M]."""
  return _pairs(a, b, 1)


def sub(a: jax.Array, b: jax.Array) -> jax.Array:
  """(a - b) mod M: the circular correlation P(c) = sum_x a[x] b[(x - c) mod M]."""
  return _pairs(a, b, -1)


def _bernoulli(p: jax.Array, m: int) -> jax.Array:
  """The distribution on {0, 1} with P(1) = p, padded to M values: [..., M]."""
  return jnp.concatenate([(1.0 - p)[..., None], p[..., None],
                          jnp.zeros(p.shape + (m - 2,), p.dtype)], -1)


def less_than(a: jax.Array, b: jax.Array) -> jax.Array:
  """[a < b]: P(1) = sum_y b[y] P(a <= y - 1) = sum_y b[y] (F_a(y) - a[y])."""
  return _bernoulli(jnp.sum(b * (jnp.cumsum(a, -1) - a), -1), a.shape[-1])


def less_or_equal(a: jax.Array, b: jax.Array) -> jax.Array:
  """[a <= b]: P(1) = sum_y b[y] F_a(y), F the cumulative distribution."""
  return _bernoulli(jnp.sum(b * jnp.cumsum(a, -1), -1), a.shape[-1])


def equal(a: jax.Array, b: jax.Array) -> jax.Array:
  """[a = b]: P(1) = <a, b>."""
  return _bernoulli(jnp.sum(a * b, -1), a.shape[-1])


def _survival(a: jax.Array) -> jax.Array:
  """S(c) = P(a >= c): [..., M]."""
  return jnp.flip(jnp.cumsum(jnp.flip(a, -1), -1), -1)


def minimum(a: jax.Array, b: jax.Array) -> jax.Array:
  """min(a, b): P(min >= c) = S_a(c) S_b(c), P(min = c) = that minus its value at c + 1."""
  s = _survival(a) * _survival(b)
  return s - jnp.concatenate([s[..., 1:], jnp.zeros_like(s[..., :1])], -1)


def maximum(a: jax.Array, b: jax.Array) -> jax.Array:
  """max(a, b): P(max <= c) = F_a(c) F_b(c), P(max = c) = that minus its value at c - 1."""
  f = jnp.cumsum(a, -1) * jnp.cumsum(b, -1)
  return f - jnp.concatenate([jnp.zeros_like(f[..., :1]), f[..., :-1]], -1)


def apply_module(name: str, args: list[jax.Array], mem: jax.Array,
                 write_returns: str) -> tuple[jax.Array, jax.Array]:
  """(output distribution [..., M], memory) of module ``name`` on its arguments."""
  like = mem[..., 0, :]
  if name == "read":
    return read(mem, args[0]), mem
  if name == "write":
    out = args[1] if write_returns == "value" else constant(0, like)
    return out, write(mem, args[0], args[1])
  if name in ("zero", "one", "two"):
    return constant(("zero", "one", "two").index(name), like), mem
  unary = {"inc": inc, "dec": dec}
  binary = {"add": add, "sub": sub, "less_than": less_than, "less_or_equal": less_or_equal,
            "equal": equal, "min": minimum, "max": maximum}
  return (unary[name](*args) if name in unary else binary[name](*args)), mem


# ----------------------------------------------------------------------------------------
# The circuit's layout and one timestep (sec. 3.1-3.3).


def module_list(repeats: int) -> tuple[tuple[str, int], ...]:
  """The Q = 14 * repeats modules of a circuit (sec. 3.1: the sequence may be repeated)."""
  return MODULES * repeats


def output_size(registers: int, repeats: int) -> int:
  """Controller logits per timestep: module arguments, register updates, finish."""
  modules = module_list(repeats)
  args = sum((registers + q) * arity for q, (_, arity) in enumerate(modules))
  return args + registers * (registers + len(modules)) + 1


class Circuit(NamedTuple):
  """A timestep's controller output, split: ``args[q]`` [..., arity_q, R + q] logits of
  module q's arguments, ``registers`` [..., R, R + Q], ``finish`` [...] (logit x_t)."""

  args: list[jax.Array]
  registers: jax.Array
  finish: jax.Array


def split_logits(flat: jax.Array, registers: int, repeats: int) -> Circuit:
  """The flat controller output [..., output_size] as a :class:`Circuit`."""
  modules, start, args = module_list(repeats), 0, []
  for q, (_, arity) in enumerate(modules):
    size = (registers + q) * arity
    args.append(flat[..., start:start + size].reshape(flat.shape[:-1] + (arity, registers + q)))
    start += size
  size = registers * (registers + len(modules))
  regs = flat[..., start:start + size].reshape(
      flat.shape[:-1] + (registers, registers + len(modules)))
  return Circuit(args, regs, flat[..., start + size])


def select(logits: jax.Array, discrete: bool) -> jax.Array:
  """Selection weights: the renormalised softmax, or its one-hot argmax (sec. 3.4)."""
  if discrete:
    return jax.nn.one_hot(jnp.argmax(logits, -1), logits.shape[-1], dtype=logits.dtype)
  return renormalize(jax.nn.softmax(logits, -1))


def entropy(p: jax.Array, eps: jax.Array) -> jax.Array:
  """-sum p log max(p, eps) over the last axis."""
  return -jnp.sum(p * safe_log(p, eps), -1)


def circuit(regs: jax.Array, mem: jax.Array, logits: Circuit, repeats: int,
            write_returns: str, discrete: bool,
            eps: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
  """One fuzzy circuit: registers [B, R, M] and memory [B, M, M] after the modules and the
  register updates, and the mean entropy [B] of its selection distributions (sec. 3.1-3.3).
  """
  values = [regs[:, i] for i in range(regs.shape[1])]
  ent = jnp.zeros(regs.shape[:1])
  for (name, arity), arg_logits in zip(module_list(repeats), logits.args):
    args = []
    if arity:
      weights = select(arg_logits, discrete)  # [B, arity, R + q]
      ent += jnp.sum(entropy(weights, eps), -1)
      args = list(jnp.einsum("bak,bkm->abm", weights, jnp.stack(values, 1)))
    out, mem = apply_module(name, args, mem, write_returns)
    values.append(renormalize(out))
  weights = select(logits.registers, discrete)  # [B, R, R + Q]
  ent += jnp.sum(entropy(weights, eps), -1)
  regs = renormalize(jnp.einsum("brk,bkm->brm", weights, jnp.stack(values, 1)))
  count = sum(arity for _, arity in module_list(repeats)) + regs.shape[1]
  return regs, mem, ent / count


class Trace(NamedTuple):
  """A run of the machine: finish probabilities f [T, B], memories [T, B, M, M] after each
  timestep, the selection entropy [B] (mean over the distributions of a circuit, summed over
  timesteps)."""

  finish: jax.Array
  memories: jax.Array
  entropy: jax.Array


Controller = Callable[[Any, jax.Array], tuple[Any, jax.Array]]


def execute(controller: Controller, carry: Any, memory: jax.Array, timesteps: int,
            registers: int, repeats: int, write_returns: str, discrete: bool,
            eps: jax.Array, c1: jax.Array) -> Trace:
  """Runs the machine for ``timesteps`` steps on integer memories [B, M].

  ``controller(carry, p_zero [B, R]) -> (carry, logits [B, output_size])`` is called at
  the start of every step with P(r_i = 0). Raises ValueError for M < 3 (the constants).
  """
  b, m = memory.shape
  if m < 3:
    raise ValueError(f"the NRAM needs at least 3 memory cells (constant TWO), got {m}.")
  mem = jax.nn.one_hot(memory.astype(jnp.int32), m)
  regs = jax.nn.one_hot(jnp.zeros((b, registers), jnp.int32), m)

  def step(state, _):
    carry, regs, mem = state
    carry, flat = controller(carry, regs[..., 0])
    logits = split_logits(clip_gradient(flat, c1), registers, repeats)
    regs, mem, ent = circuit(regs, mem, logits, repeats, write_returns, discrete, eps)
    regs, mem = clip_gradient(regs, c1), clip_gradient(mem, c1)
    return (carry, regs, mem), (jax.nn.sigmoid(logits.finish), mem, ent)

  _, (finish, memories, ent) = jax.lax.scan(step, (carry, regs, mem), None, timesteps)
  return Trace(finish, memories, jnp.sum(ent, 0))


# ----------------------------------------------------------------------------------------
# Loss and metrics (sec. 3.3, 4).


def stopping_probabilities(finish: jax.Array) -> jax.Array:
  """p [T, ...] from f [T, ...]: p_t = f_t prod_{i<t}(1 - f_i) for t < T and
  p_T = prod_{i<T}(1 - f_i) = 1 - sum_{t<T} p_t (sec. 3.3)."""
  running = jnp.cumprod(jnp.concatenate([jnp.ones_like(finish[:1]), 1.0 - finish[:-1]]), 0)
  stop_now = jnp.concatenate([finish[:-1], jnp.ones_like(finish[-1:])])
  return running * stop_now


def cell_nll(memories: jax.Array, target: jax.Array, mask: jax.Array,
             eps: jax.Array) -> jax.Array:
  """-sum_{i in out} log max(Mem_t[i, y_i], eps): [T, B] from memories [T, B, M, M]."""
  prob = jnp.sum(memories * jax.nn.one_hot(target, memories.shape[-1]), -1)  # no gather
  return -jnp.sum(safe_log(prob, eps) * mask, -1)


def expected_nll(finish: jax.Array, nll: jax.Array) -> jax.Array:
  """sum_t p_t nll_t: [B] from f, nll [T, B] (sec. 3.3)."""
  return jnp.sum(stopping_probabilities(finish) * nll, 0)


def scored_memory(trace: Trace, score: str) -> jax.Array:
  """The memory [B, M, M] the metrics read: sum_t p_t Mem_t or Mem_T (``model.score``)."""
  if score == "final":
    return trace.memories[-1]
  return jnp.einsum("tb,tbij->bij", stopping_probabilities(trace.finish), trace.memories)


def cell_errors(memory: jax.Array, target: jax.Array, mask: jax.Array) -> jax.Array:
  """Wrong output cells after argmax: [B] counts."""
  return jnp.sum((jnp.argmax(memory, -1) != target) & mask, -1).astype(jnp.float32)


# ----------------------------------------------------------------------------------------
# Controllers (sec. 3.2).


def _dense(key: jax.Array, fan_in: int, fan_out: int, scale: jax.Array) -> Params:
  w = jax.random.normal(key, (fan_in, fan_out)) * scale / np.sqrt(fan_in)
  return {"w": w, "b": jnp.zeros(fan_out)}


def init_params(key: jax.Array, batch: experiment.Batch, hp: experiment.HParams,
                config: experiment.GroupConfig) -> Params:
  """Controller weights: the input layer, the LSTM cell (or the MLP's second layer) and
  the output map to ``output_size`` logits."""
  model = config.model
  h, r = model.hidden, model.registers
  keys = jax.random.split(key, 3)
  params = {"input": _dense(keys[0], r, h, hp["init_scale"]),
            "output": _dense(keys[2], h, output_size(r, model.repeats), hp["init_scale"])}
  params["output"]["b"] = params["output"]["b"].at[-1].set(hp["finish_bias"])
  if model.controller == "lstm":
    cell = _dense(keys[1], 2 * h, 4 * h, hp["init_scale"])
    cell["b"] = cell["b"].at[h:2 * h].set(FORGET_BIAS)  # gates: input, forget, cell, output
    params["lstm"] = cell
  else:
    params["hidden"] = _dense(keys[1], h, h, hp["init_scale"])
  return params


def lstm_controller(params: Params, carry: tuple[jax.Array, jax.Array],
                    p_zero: jax.Array) -> tuple[tuple[jax.Array, jax.Array], jax.Array]:
  """ReLU layer, then an LSTM cell, then the linear output map; carry (h, c) [B, H]."""
  h, c = carry
  x = jax.nn.relu(p_zero @ params["input"]["w"] + params["input"]["b"])
  gates = jnp.concatenate([x, h], -1) @ params["lstm"]["w"] + params["lstm"]["b"]
  i, f, g, o = jnp.split(gates, 4, -1)
  c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
  h = jax.nn.sigmoid(o) * jnp.tanh(c)
  return (h, c), h @ params["output"]["w"] + params["output"]["b"]


def mlp_controller(params: Params, carry: tuple[()],
                   p_zero: jax.Array) -> tuple[tuple[()], jax.Array]:
  """Two ReLU layers, then the linear output map; no state between steps."""
  x = jax.nn.relu(p_zero @ params["input"]["w"] + params["input"]["b"])
  x = jax.nn.relu(x @ params["hidden"]["w"] + params["hidden"]["b"])
  return carry, x @ params["output"]["w"] + params["output"]["b"]


def run_model(params: Params, memory: jax.Array, timesteps: int, hp: experiment.HParams,
              config: experiment.GroupConfig, discrete: bool = False) -> Trace:
  """The trained controller driving the machine on integer memories [B, M]."""
  model = config.model
  if model.controller == "lstm":
    zeros = jnp.zeros((memory.shape[0], model.hidden))
    controller, carry = functools.partial(lstm_controller, params), (zeros, zeros)
  else:
    controller, carry = functools.partial(mlp_controller, params), ()
  return execute(controller, carry, memory, timesteps, model.registers, model.repeats,
                 model.write_returns, discrete, hp["log_eps"], hp["grad_clip"])


# ----------------------------------------------------------------------------------------
# Curriculum (App. B) and the experiment's functions.


def sample_lengths(key: jax.Array, n: int, level: jax.Array, max_length: int) -> jax.Array:
  """Example lengths [n] in [1, max_length] for curriculum level D (see module doc)."""
  k = jax.random.split(key, 4)
  e = jax.random.geometric(k[0], 0.5, (n,)) - 1  # failures before the first success
  near = jnp.minimum(level + e, max_length)
  upto = jax.random.randint(k[1], (n,), 1, near + 1)
  every = jax.random.randint(k[2], (n,), 1, max_length + 1)
  u = jax.random.uniform(k[3], (n,))
  return jnp.where(u < CURRICULUM_ALL, every,
                   jnp.where(u < CURRICULUM_ALL + CURRICULUM_UPTO, upto, near))


def select_rows(batch: experiment.Batch, lengths: jax.Array) -> experiment.Batch:
  """Row ``length - 1`` of each pool entry [B, D_max, M] -> [B, M]."""
  index = (lengths - 1)[:, None, None]
  return {k: jnp.take_along_axis(v, index, 1)[:, 0] for k, v in batch.items()}


def loss_fn(params: Params, batch: experiment.Batch, key: jax.Array, hp: experiment.HParams,
            config: experiment.GroupConfig) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Expected NLL over stopping times minus the decaying entropy bonus (sec. 3.3, 4.1)."""
  lengths = sample_lengths(key, batch["memory"].shape[0], hp["level"], config.data.max_length)
  example = select_rows(batch, lengths)
  target = example["target"].astype(jnp.int32)
  trace = run_model(params, example["memory"], config.model.timesteps, hp, config)
  nll = expected_nll(trace.finish, cell_nll(trace.memories, target, example["mask"],
                                            hp["log_eps"]))
  coeff = hp["entropy_start"] * hp["entropy_decay"] ** hp["step"].astype(jnp.float32)
  loss = jnp.mean(nll) - coeff * jnp.mean(trace.entropy)
  wrong = cell_errors(jax.lax.stop_gradient(scored_memory(trace, config.model.score)),
                      target, example["mask"])
  cells = jnp.sum(example["mask"], -1).astype(jnp.float32)
  current = lengths <= hp["level"]
  return loss, {
      "nll": jnp.mean(nll),
      "error": jnp.sum(wrong) / jnp.sum(cells),
      "curriculum_errors": jnp.sum(wrong * current),
      "curriculum_cells": jnp.sum(cells * current),
  }


def eval_fn(params: Params, batch: experiment.Batch, hp: experiment.HParams,
            config: experiment.GroupConfig) -> dict[str, jax.Array]:
  """Per-example cell error [B] with soft and with discretised execution."""
  memory, mask = batch["memory"], batch["mask"]
  target = batch["target"].astype(jnp.int32)
  large = memory.shape[-1] != config.data.memory_size
  timesteps = config.data.large_timesteps if large else config.model.timesteps
  cells = jnp.maximum(jnp.sum(mask, -1), 1).astype(jnp.float32)
  out = {}
  for name, discrete in (("error", False), ("discrete_error", True)):
    trace = run_model(params, memory, timesteps, hp, config, discrete)
    out[name] = cell_errors(scored_memory(trace, config.model.score), target, mask) / cells
  return out


def init_state(key: jax.Array, batch: experiment.Batch, hp: experiment.HParams,
               config: experiment.GroupConfig) -> dict[str, jax.Array]:
  """Curriculum state at step 0: level D, training steps, the current window's sums."""
  return {
      "level": jnp.asarray(config.curriculum.start_level, jnp.int32),
      "step": jnp.zeros([], jnp.int32),
      **curriculum.window_start("window_cells"),
  }


def after_step(extra: dict[str, jax.Array], aux: dict[str, jax.Array], hp: experiment.HParams,
               config: experiment.GroupConfig) -> dict[str, jax.Array]:
  """Counts the step; at the end of a window raises D if the window's error was low."""
  success, window = curriculum.window_step(
      extra, aux["curriculum_errors"], aux["curriculum_cells"], "window_cells",
      config.curriculum.window, hp["curriculum_threshold"])
  return {
      "level": jnp.where(success, jnp.minimum(extra["level"] + 1, config.data.max_length),
                         extra["level"]),
      "step": extra["step"] + 1,
      **window,
  }


def hparams(config: ml_collections.ConfigDict) -> dict[str, np.ndarray]:
  return {
      "init_scale": np.float32(config.model.init_scale),
      "finish_bias": np.float32(config.model.finish_bias),
      "grad_clip": np.float32(config.model.grad_clip),
      "log_eps": np.float32(config.model.log_eps),
      "entropy_start": np.float32(config.entropy.start),
      "entropy_decay": np.float32(config.entropy.decay),
      "curriculum_threshold": np.float32(config.curriculum.threshold),
  }


def load_data(config: ml_collections.ConfigDict) -> experiment.Dataset:
  data = config.data
  rng = np.random.default_rng(data.seed)
  pool = nram_tasks.training_pool(data.task, data.max_length, data.pool_size,
                                  data.memory_size, rng)
  test = nram_tasks.examples(data.task, data.max_length, data.test_examples,
                             data.memory_size, rng)
  large = nram_tasks.examples(data.task, data.large_length, data.test_examples,
                              data.large_memory, rng)
  return experiment.Dataset(
      train=pool, evals={"test": test, "large": large},
      description=(f"NRAM {data.task}: {data.pool_size} training entries x lengths "
                   f"1..{data.max_length} in {data.memory_size} cells; {data.test_examples} "
                   f"test examples of length {data.max_length} and of length "
                   f"{data.large_length} in {data.large_memory} cells (seed {data.seed})"))


FIELDS = {
    "data.task": fields.choice(*nram_tasks.TASKS),
    "data.memory_size": fields.integer(3, 127),
    "data.max_length": fields.integer(1),
    "data.large_memory": fields.integer(3, 127),
    "data.large_length": fields.integer(1),
    "data.large_timesteps": fields.integer(1),
    "data.pool_size": fields.integer(1),
    "data.test_examples": fields.integer(1),
    "data.seed": fields.integer(0, 2**32 - 1),
    "model.controller": fields.choice("lstm", "mlp"),
    "model.hidden": fields.integer(1),
    "model.registers": fields.integer(1),
    "model.repeats": fields.integer(1),
    "model.timesteps": fields.integer(1),
    "model.write_returns": fields.choice("value", "zero"),
    "model.score": fields.choice("expected", "final"),
    "model.init_scale": fields.number(0, low_open=True),
    "model.finish_bias": fields.number(),
    "model.grad_clip": fields.number(0, low_open=True),
    "model.log_eps": fields.number(0, 1, low_open=True, high_open=True),
    "entropy.start": fields.number(0),
    "entropy.decay": fields.number(0, 1),
    "curriculum.start_level": fields.integer(1),
    "curriculum.threshold": fields.number(0, 1, low_open=True),
    "curriculum.window": fields.integer(1),
}


def validate(config: ml_collections.ConfigDict) -> None:
  """Rules between fields (each field's own range is in FIELDS)."""
  data = config.data
  for length, memory, name in ((data.max_length, data.memory_size, "data.max_length"),
                               (data.large_length, data.large_memory, "data.large_length")):
    most = nram_tasks.max_length(data.task, memory)
    if length > most:
      raise UsageError(f"config field {name}={length!r} is invalid; accepted: at most "
                       f"{most} ({data.task} in {memory} cells).", field=name)
  if data.large_memory == data.memory_size:  # eval_fn tells the splits apart by M
    raise UsageError(f"config field data.large_memory={data.large_memory!r} is invalid; "
                     f"accepted: a size other than data.memory_size={data.memory_size}.",
                     field="data.large_memory")
  if config.curriculum.start_level > data.max_length:
    raise UsageError(f"config field curriculum.start_level={config.curriculum.start_level!r} "
                     f"is invalid; accepted: at most data.max_length={data.max_length}.",
                     field="curriculum.start_level")


EXPERIMENT = experiment.Experiment(
    name="nram",
    traced_fields=("model.init_scale", "model.finish_bias", "model.grad_clip",
                   "model.log_eps", "entropy.start", "entropy.decay",
                   "curriculum.threshold"),
    fields=FIELDS,
    validate=validate,
    load_data=load_data,
    hparams=hparams,
    init_params=init_params,
    loss_fn=loss_fn,
    eval_fn=eval_fn,
    summary_metric="test_error",
    state=experiment.RunStateHooks(init=init_state, after_step=after_step),
)
