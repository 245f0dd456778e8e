"""Config of examples/mnist_cnn.py: noise vs no noise for a small CNN on shipped MNIST digits.

Variants (``--config examples/mnist_cnn_config.py[:variant]``):
  default  noise eta {0, 0.01} x 4 seeds, 10 epochs of the 4000 training digits, SGD 0.1,
           8 runs in one compiled program.
  tiny     the same sweep on 256 digits, a 4-channel convolution, 1 epoch (for tests).
"""

import os

import ml_collections

from gradnoise.sweep import product, seeds, values

VARIANTS = ("default", "tiny")


def get_config(arg: str = "default") -> ml_collections.ConfigDict:
  if arg not in VARIANTS:
    raise ValueError(f"unknown variant {arg!r} of examples/mnist_cnn_config.py; "
                     f"accepted: {', '.join(VARIANTS)}.")
  tiny = arg == "tiny"
  config = ml_collections.ConfigDict()
  config.experiment = os.path.join(os.path.dirname(__file__), "mnist_cnn.py")
  config.seed = 0
  config.num_epochs = 1 if tiny else 10
  config.batch_size = 32 if tiny else 128

  config.optimizer = ml_collections.ConfigDict()
  config.optimizer.name = "sgd"
  config.optimizer.learning_rate = 0.1
  config.optimizer.decay_every_epochs = 0
  config.optimizer.decay_factor = 1.0

  config.clip = ml_collections.ConfigDict()
  config.clip.norm = 10.0
  config.clip.per_leaf = False

  config.noise = ml_collections.ConfigDict()
  config.noise.schedule = "annealed"
  config.noise.eta = 0.01
  config.noise.gamma = 0.55
  config.noise.std = 0.001

  config.model = ml_collections.ConfigDict()
  config.model.features = (4,) if tiny else (8, 16)
  config.model.dense = 16 if tiny else 32
  config.model.dropout_rate = 0.25

  config.data = ml_collections.ConfigDict()
  config.data.num_train = 256 if tiny else 4000

  config.train = ml_collections.ConfigDict()
  config.train.runs_per_batch = 8
  config.train.eval_every_epochs = 1
  config.train.eval_batch_size = 1000
  config.train.checkpoint_every_epochs = 0
  return config


def get_sweep(arg: str = "default") -> list[dict]:
  del arg  # every variant sweeps the same
  return product(values("noise.eta", [0.0, 0.01]), seeds(4))
