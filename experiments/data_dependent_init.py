"""Data-dependent initialisation of a chain of dense layers.

Kraehenbuehl, Doersch, Donahue & Darrell (2015), "Data-dependent Initializations of
Convolutional Neural Networks", arXiv:1511.06856 (ICLR 2016), Algorithms 1 and 2, for a
network ``x -> dense_0 -> act -> dense_1 -> act -> ... -> dense_{L-1}`` (no activation
after the last layer). A layer is a dict ``{"kernel": [in, out], "bias": [out]}``, as
flax's ``nn.Dense`` stores it (``z = a @ kernel + bias``).

1. :func:`gaussian_layers`: W_k ~ N(0, I) (unit-variance i.i.d.), b_k = 0.
2. :func:`within_layer` (Algorithm 1): in order k = 0..L-1, pass the sample through the
   layers below (already normalised), and for each output unit i of layer k, with mean
   mu_k(i) and std sigma_k(i) of its pre-activation over the sample:
   W_k(:, i) <- W_k(:, i) / sigma_k(i), b_k(i) <- beta - mu_k(i) / sigma_k(i). Afterwards
   every unit's pre-activation has mean beta and std 1 over the sample (exactly, up to
   float rounding: the statistics are those of the sample itself).
3. :func:`between_layer` (Algorithm 2), ``iterations`` times:
   - :func:`change_rates`: C_k of every layer under a random linear loss
     ``sum_b eta_b . z_L(b)`` with a new eta_b ~ N(0, I) per example (and per iteration):
     C_{k,j}^2 = mean_i E_b[(a_{k-1}(b, j) y_k(b, i))^2] / mean(W_k^2), the per-example
     squared gradient of weight (j, i) over the mean squared weight of the layer, averaged
     over the layer's outputs i; C_k = mean_j C_{k,j} (y_k: the backpropagated error at the
     pre-activation of layer k, a_{k-1}: the layer's input).
   - target C = (prod_k C_k)^(1/L) (geometric mean); r_k = (C_k / C)^(alpha / 2).
   - layer k's output is scaled by s_k = r_0 ... r_k (its weights by r_k: the input scale
     s_{k-1} of the layer below is undone in layer k's weights, its bias by s_k). For a
     positively homogeneous activation (ReLU, identity) the hidden pre-activations are
     scaled by the positive s_k and the output by s_{L-1} = prod_k r_k = 1 (the geometric
     mean's purpose), so the network's function is unchanged; we set s_{L-1} = 1 exactly.
     Each layer's change rate becomes C_k / r_k^2 = C_k^(1 - alpha) C^alpha: the spread of
     log C_k shrinks by the factor (1 - alpha) per iteration (up to the sampling noise of
     the estimate). Non-homogeneous activations (ELU, tanh) would need an extra scaling
     layer (the paper's remedy); this module does not insert one, so callers should use
     ``iterations=0`` for them (within-layer normalisation only).

Our choices where the paper leaves room (see docs): the change rate is the per-column
average of the RMS relative gradient, computed exactly from the per-example gradients of
the sample (the paper's independence approximation E[z^2] E[||y||^2] is only needed to
explain the split into two steps), with the mean squared weight of the layer as the
normaliser (so that layers of different sizes are comparable, as in the authors' code
philkr/magic_init); the sample is whatever batch the caller passes. Every function is
pure JAX with static shapes and loop counts: it can be jitted and vmapped over runs (keys,
samples, beta and alpha).
"""

from __future__ import annotations

from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

Layer = dict[str, jax.Array]
Activation = Callable[[jax.Array], jax.Array]
EPS = 1e-12  # floor of a unit's std over the sample (a unit constant over the sample)


def gaussian_layers(key: jax.Array, sizes: Sequence[int],
                    dtype: jnp.dtype = jnp.float32) -> list[Layer]:
  """Dense layers ``sizes[k] -> sizes[k+1]`` with N(0, 1) weights and zero biases (one
  draw for all kernels: one random-number kernel to compile, not one per layer)."""
  shapes = list(zip(sizes[:-1], sizes[1:]))
  flat = jax.random.normal(key, (sum(n_in * n_out for n_in, n_out in shapes),), dtype)
  offsets = np.cumsum([0] + [n_in * n_out for n_in, n_out in shapes])
  return [{"kernel": flat[start:start + n_in * n_out].reshape(n_in, n_out),
           "bias": jnp.zeros((n_out,), dtype)}
          for start, (n_in, n_out) in zip(offsets, shapes)]


def forward(layers: Sequence[Layer], x: jax.Array, activation: Activation,
            perturbations: Sequence[jax.Array] | None = None) -> list[jax.Array]:
  """Pre-activations [B, out] of every layer on ``x`` [B, in] (the last is the output).

  ``perturbations`` (one [B, out] array per layer, optional) are added to the
  pre-activations: the gradient of a loss with respect to them at zero is the
  backpropagated error y_k of every layer.
  """
  outs, a = [], x
  for k, layer in enumerate(layers):
    z = a @ layer["kernel"] + layer["bias"]
    if perturbations is not None:
      z = z + perturbations[k]
    outs.append(z)
    a = activation(z)
  return outs


def inputs_of(layers: Sequence[Layer], x: jax.Array, activation: Activation,
              pre_activations: Sequence[jax.Array]) -> list[jax.Array]:
  """The input a_{k-1} [B, in] of every layer: ``x``, then the activations below."""
  return [x] + [activation(z) for z in pre_activations[:-1]]


def within_layer(layers: Sequence[Layer], x: jax.Array, activation: Activation,
                 beta: jax.Array | float) -> list[Layer]:
  """Algorithm 1: each unit rescaled to std 1 over the sample ``x``, its bias set so that
  its mean is ``beta``; layers in order, each seeing the normalised layers below. The
  given biases are ignored (the paper starts from b = 0; the result does not depend on
  them)."""
  out, a = [], x
  for layer in layers:
    z = a @ layer["kernel"]
    mu, sigma = jnp.mean(z, axis=0), jnp.std(z, axis=0)
    sigma = jnp.maximum(sigma, EPS)
    new = {"kernel": layer["kernel"] / sigma, "bias": beta - mu / sigma}
    out.append(new)
    a = activation(a @ new["kernel"] + new["bias"])
  return out


def change_rates(layers: Sequence[Layer], x: jax.Array, key: jax.Array,
                 activation: Activation) -> jax.Array:
  """C_k [L] of every layer (see the module docstring) on the sample ``x`` under the
  random linear loss with eta ~ N(0, I) drawn from ``key``, one per example."""
  zeros = [jnp.zeros((x.shape[0], layer["bias"].shape[0]), x.dtype) for layer in layers]
  pre, backward = jax.vjp(lambda p: forward(layers, x, activation, p), zeros)
  eta = jax.random.normal(key, pre[-1].shape, x.dtype)
  # y_k [B, out]: d(sum_b eta_b . z_L(b)) / dz_k, per example
  (errors,) = backward([jnp.zeros_like(z) for z in pre[:-1]] + [eta])
  rates = []
  for layer, a, y in zip(layers, inputs_of(layers, x, activation, pre), errors):
    # mean_i E_b[a(b, j)^2 y(b, i)^2] = E_b[a(b, j)^2 mean_i y(b, i)^2] for every input j
    grad_sq = jnp.mean(a**2 * jnp.mean(y**2, axis=1, keepdims=True), axis=0)
    per_column = jnp.sqrt(grad_sq / jnp.mean(layer["kernel"]**2))
    rates.append(jnp.mean(per_column))
  return jnp.stack(rates)


def rescale(layers: Sequence[Layer], rates: jax.Array, alpha: jax.Array | float) -> list[Layer]:
  """One step of Algorithm 2 from measured change rates ``rates`` [L]: r_k =
  (C_k / geometric mean)^(alpha / 2), layer k's output scaled by s_k = r_0 ... r_k
  (weights by s_k / s_{k-1}, bias by s_k), s_{L-1} = 1."""
  log_rates = jnp.log(rates)
  log_r = 0.5 * alpha * (log_rates - jnp.mean(log_rates))
  log_s = jnp.cumsum(log_r).at[-1].set(0.0)
  log_s_below = jnp.concatenate([jnp.zeros((1,), log_s.dtype), log_s[:-1]])
  weight_scale, bias_scale = jnp.exp(log_s - log_s_below), jnp.exp(log_s)
  return [{"kernel": layer["kernel"] * weight_scale[k].astype(layer["kernel"].dtype),
           "bias": layer["bias"] * bias_scale[k].astype(layer["bias"].dtype)}
          for k, layer in enumerate(layers)]


def between_layer(layers: Sequence[Layer], x: jax.Array, key: jax.Array,
                  activation: Activation, alpha: jax.Array | float,
                  iterations: int) -> tuple[list[Layer], jax.Array]:
  """Algorithm 2, ``iterations`` steps (a static count), each with a fresh eta.

  Returns the rescaled layers and the change rates [iterations + 1, L] measured before
  each step and after the last (row t with the key ``fold_in(key, t)``).
  """
  def step(layers, t):
    rates = change_rates(layers, x, jax.random.fold_in(key, t), activation)
    # one loop body (compiled once): the last pass only measures
    return rescale(layers, rates, jnp.where(t < iterations, alpha, 0.0)), rates

  layers, history = jax.lax.scan(step, list(layers), jnp.arange(iterations + 1))
  return layers, history


def initialise(key: jax.Array, sizes: Sequence[int], x: jax.Array, activation: Activation, *,
               beta: jax.Array | float, alpha: jax.Array | float,
               iterations: int) -> tuple[list[Layer], jax.Array]:
  """The whole method: Gaussian layers ``sizes`` from ``key``, within-layer normalisation
  on the sample ``x`` [B, sizes[0]], then ``iterations`` between-layer steps.

  Returns the layers and the change-rate history of :func:`between_layer`.
  """
  weight_key, eta_key = jax.random.split(key)
  layers = within_layer(gaussian_layers(weight_key, sizes, x.dtype), x, activation, beta)
  return between_layer(layers, x, eta_key, activation, alpha, iterations)
