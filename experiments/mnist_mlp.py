"""Experiment 1 of Neelakantan et al. (2015): a deep fully connected network on MNIST.

20 hidden layers x 50 units (configurable), ReLU or ELU, softmax output, cross-entropy: a
linen module run by :func:`gradnoise.flax_experiment.supervised`. The Gaussian inits are
"Gaussian weights with a per-layer std, zero biases", so the init (a traced per-layer std
vector) and the dropout rate (inverted dropout on the hidden activations) vary inside one
compiled program; dropout on/off is the code choice.

``model.init=data_dependent`` is the data-dependent initialisation of Kraehenbuehl et al.
(2015), arXiv:1511.06856 (:mod:`experiments.data_dependent_init`): N(0, 1) weights, each
unit normalised to std 1 and mean ``model.ddi.beta`` over the sample batch that
``init_params`` receives (the run's first training batch, ``batch_size`` examples), then
``model.ddi.iterations`` steps of between-layer scale equalisation with damping
``model.ddi.alpha``. It is a code choice (``data_dependent``): data-dependent runs compile
apart from the Gaussian inits, whose program is unchanged; within its group each run's
init is computed from its own init key and sample, vmapped with the others (beta and alpha
are traced). ``model.ddi.*`` are used only by those runs (:func:`unused_fields`).
"""

from __future__ import annotations

import dataclasses
import math

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from experiments import data_dependent_init, mnist_data
from gradnoise import experiment, fields, flax_experiment
from gradnoise.errors import UsageError

INPUTS, CLASSES = 784, 10
INITS = ("zero", "simple", "he", "sussillo_abbott", "data_dependent")
DDI_FIELDS = ("model.ddi.beta", "model.ddi.alpha", "model.ddi.iterations")
ACTIVATIONS = {"relu": jax.nn.relu, "elu": jax.nn.elu}


def sussillo_abbott_gain(fan_in: int) -> float:
  """Random-walk initialisation gain for ReLU networks.

  Sussillo & Abbott (2014), "Random Walk Initialization for Training Very Deep
  Feedforward Networks", arXiv:1412.6558, eq. for ReLU:
  g = sqrt(2) * exp(1.2 / (max(N, 6) - 2.4)), weights N(0, g^2 / N), N = fan-in.
  """
  return math.sqrt(2.0) * math.exp(1.2 / (max(fan_in, 6) - 2.4))


def layer_sizes(config: ml_collections.ConfigDict) -> list[int]:
  return [INPUTS] + [config.model.width] * config.model.depth + [CLASSES]


def init_stds(config: ml_collections.ConfigDict) -> np.ndarray:
  """Weight std of each layer for ``model.init`` (a traced value, one per layer)."""
  fan_ins = np.array(layer_sizes(config)[:-1], np.float64)
  init = config.model.init
  if init == "zero":
    stds = np.zeros_like(fan_ins)
  elif init == "simple":  # the paper's "Simple Init": N(0, 0.1^2)
    stds = np.full_like(fan_ins, 0.1)
  elif init == "he":  # He et al. (2015): N(0, 2 / fan_in)
    stds = np.sqrt(2.0 / fan_ins)
  elif init == "data_dependent":  # not drawn: init_params uses data_dependent_init
    stds = np.ones_like(fan_ins)
  else:  # sussillo_abbott
    stds = np.array([sussillo_abbott_gain(int(n)) for n in fan_ins]) / np.sqrt(fan_ins)
  return stds.astype(np.float32)


FIELDS = {
    "model.depth": fields.integer(0),
    "model.width": fields.integer(1),
    "model.activation": fields.choice(*ACTIVATIONS),
    "model.init": fields.choice(*INITS),
    "model.dropout_rate": fields.number(0, 1, high_open=True),
    # data-dependent init (model.init=data_dependent only). beta: the paper's value is not
    # known to us; 0.1 is the authors' code's default (philkr/magic_init, -b 0.1)
    "model.ddi.beta": fields.number(default=0.1),  # mean of every unit over the sample
    "model.ddi.alpha": fields.number(0, 1, low_open=True, default=0.25),  # damping
    "model.ddi.iterations": fields.integer(0, default=10),  # between-layer steps
    "data.source": fields.choice(*mnist_data.SOURCES),
    "data.path": fields.optional(fields.text(), "the source's default location"),
}


def gaussian(std: jax.Array) -> jax.nn.initializers.Initializer:
  """Initializer of N(0, std^2) weights; ``std`` may be traced."""
  return lambda key, shape, dtype=np.float32: jax.random.normal(key, shape, dtype) * std


class MLP(nn.Module):
  """Logits [B, 10] of inputs [B, 784]; ``init_std`` [layers] is each layer's weight std.

  Attributes:
    widths: output width of each layer (``layer_sizes(config)[1:]``).
    activation: a key of ``ACTIVATIONS``.
    init_std: per-layer weight std (traced); biases start at zero.
    dropout_rate: traced rate of inverted dropout after every hidden activation, or None
      for no dropout.
  """

  widths: Sequence[int]
  activation: str
  init_std: jax.Array
  dropout_rate: Any = None

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    for i, width in enumerate(self.widths):
      x = nn.Dense(width, kernel_init=gaussian(self.init_std[i]), name=f"layer_{i}")(x)
      if i + 1 < len(self.widths):
        x = ACTIVATIONS[self.activation](x)
        if self.dropout_rate is not None:
          x = flax_experiment.Dropout(self.dropout_rate)(x, deterministic=not train)
    return x


def model(hp: experiment.HParams, config: experiment.GroupConfig) -> MLP:
  dropout_rate = hp["dropout_rate"] if config.code_choices["dropout"] else None
  return MLP(tuple(layer_sizes(config)[1:]), config.model.activation, hp["init_std"],
             dropout_rate)


def data(config: ml_collections.ConfigDict) -> flax_experiment.ArrayData:
  mnist = mnist_data.load_mnist(config.data.source, config.data.path)
  return flax_experiment.ArrayData(mnist.x_train, mnist.y_train,
                                   {"test": (mnist.x_test, mnist.y_test)}, mnist.description)


def hparams(config: ml_collections.ConfigDict) -> dict[str, np.ndarray]:
  ddi = config.model.init == "data_dependent"
  return {"init_std": init_stds(config), "dropout_rate": np.float32(config.model.dropout_rate),
          # other inits get fixed values: their hp do not depend on unused fields
          "ddi_beta": np.float32(config.model.ddi.beta if ddi else 0.0),
          "ddi_alpha": np.float32(config.model.ddi.alpha if ddi else 1.0)}


def unused_fields(config: ml_collections.ConfigDict) -> dict[str, str]:
  """Fields of this experiment that ``config`` does not use, each with the reason (as
  ``gradnoise.trainer.unused_fields``): a sweep over them would repeat runs."""
  if config.model.init == "data_dependent":
    return {}
  reason = f"model.init={config.model.init!r} is not data_dependent"
  return {name: reason for name in DDI_FIELDS}


def validate(config: ml_collections.ConfigDict) -> None:
  if (config.model.init == "data_dependent" and config.model.activation != "relu"
      and config.model.ddi.iterations > 0):
    raise UsageError(
        f"config field model.ddi.iterations={config.model.ddi.iterations} with "
        f"model.activation={config.model.activation!r}: the between-layer step of "
        "model.init=data_dependent keeps the network's function only for ReLU (a positive "
        "rescaling of a layer is undone in the layer above); accepted: "
        "model.activation=relu, or model.ddi.iterations=0 (within-layer normalisation "
        "only).", field="model.ddi.iterations")


def data_dependent_params(key: jax.Array, x: jax.Array, hp: experiment.HParams,
                          config: experiment.GroupConfig) -> dict[str, Any]:
  """The MLP's parameters from :func:`data_dependent_init.initialise` on the sample ``x``
  [B, 784] (``hp``: ``ddi_beta``, ``ddi_alpha``)."""
  layers, _ = data_dependent_init.initialise(
      key, layer_sizes(config), x.reshape(x.shape[0], -1).astype(jnp.float32),
      ACTIVATIONS[config.model.activation], beta=hp["ddi_beta"], alpha=hp["ddi_alpha"],
      iterations=config.model.ddi.iterations)
  return {f"layer_{i}": layer for i, layer in enumerate(layers)}


_GAUSSIAN = flax_experiment.supervised(
    "mnist_mlp", model, data,
    fields=FIELDS,
    traced_fields=("model.init", "model.dropout_rate", "model.ddi.beta", "model.ddi.alpha"),
    hparams=hparams,
    code_choices=lambda config: {"dropout": config.model.dropout_rate > 0,
                                 "data_dependent": config.model.init == "data_dependent"},
    validate=validate,
    mutable=(),
)


def init_params(key: jax.Array, batch: experiment.Batch, hp: experiment.HParams,
                config: experiment.GroupConfig) -> dict[str, Any]:
  """The Gaussian init of ``hp["init_std"]``, or in a data-dependent group the
  data-dependent init from ``key`` and the sample ``batch["x"]``."""
  if config.code_choices["data_dependent"]:
    return data_dependent_params(key, batch["x"], hp, config)
  return _GAUSSIAN.init_params(key, batch, hp, config)


EXPERIMENT = dataclasses.replace(_GAUSSIAN, init_params=init_params,
                                 unused_fields=unused_fields,
                                 curves=("train_loss", "test_accuracy"))
loss_fn = EXPERIMENT.loss_fn  # for benchmarks
