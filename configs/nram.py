"""Experiment 4 of Neelakantan et al. (2015): NRAM on the k-th element of a list (Table 5).

Variants (``--config configs/nram.py:<variant>``):
  table5  ListK with lists of up to 10 nodes (Kurach et al., Table 1: len(list) <= 10) in 24
          cells, 16 timesteps, LSTM controller; generalisation tested on 20-node lists in
          44 cells with 30 timesteps. 3 settings x the same 100 seeds x noise {0, eta 0.3
          gamma 0.55}: 600 runs, one compile group (the settings differ in traced fields
          only). An accelerator job (cost in benchmarks/README.md).
  small   Access on arrays of up to 4 values in 8 cells (6 timesteps), 4 seeds x both
          arms at the first table5 setting: 8 runs, a check on 2 CPU cores in ~20 min
          (commands and results in docs/results.md).

Neelakantan et al. take the 3 best settings of a large random search (per Kurach et al.)
and train each from the same 100 seeds with and without noise; they do not publish the
settings, and Kurach et al. publish no hyperparameters for ListK. Ours are documented
choices, not the paper's: Adam, batch 32, LSTM width 32, R = 4 registers, the 14 modules
once, C1 = 10 on activation gradients, C2 = 10 on the global gradient norm, eps = 1e-10,
entropy bonus 0.01 decaying by 0.9999 per step, curriculum from length 1, raised when a
100-step window's cell error is below 0.05. The three settings vary the learning rate,
C2 and the entropy bonus (``SETTINGS``).
"""

import ml_collections

from gradnoise.sweep import product, seeds, values, zipped

VARIANTS = ("table5", "small")
# The three table5 settings: (learning rate, C2 = clip.norm, entropy.start).
SETTINGS = ((0.01, 10.0, 0.01), (0.003, 10.0, 0.01), (0.01, 1.0, 0.003))


def get_config(arg: str = "small") -> ml_collections.ConfigDict:
  if arg not in VARIANTS:
    raise ValueError(f"unknown variant {arg!r} of configs/nram.py; "
                     f"accepted: {', '.join(VARIANTS)}.")
  small = arg == "small"
  config = ml_collections.ConfigDict()
  config.experiment = "nram"
  config.seed = 0
  config.batch_size = 32
  # An epoch is pool_size / batch_size steps.
  config.num_epochs = 10 if small else 50

  config.optimizer = ml_collections.ConfigDict()
  config.optimizer.name = "adam"
  config.optimizer.learning_rate = SETTINGS[0][0]
  config.optimizer.decay_every_epochs = 0
  config.optimizer.decay_factor = 1.0

  config.clip = ml_collections.ConfigDict()
  config.clip.norm = SETTINGS[0][1]  # C2
  config.clip.per_leaf = False

  config.noise = ml_collections.ConfigDict()
  config.noise.schedule = "annealed"
  config.noise.eta = 0.3  # 0 = no noise
  config.noise.gamma = 0.55
  config.noise.std = 0.001  # used by schedule=constant

  config.model = ml_collections.ConfigDict()
  config.model.controller = "lstm"
  config.model.hidden = 32
  config.model.registers = 4
  config.model.repeats = 1
  config.model.timesteps = 6 if small else 16
  config.model.write_returns = "value"
  config.model.score = "expected"
  config.model.init_scale = 1.0
  config.model.finish_bias = -2.0  # f = 0.12 at the start
  config.model.grad_clip = 10.0  # C1
  config.model.log_eps = 1e-10

  config.entropy = ml_collections.ConfigDict()
  config.entropy.start = SETTINGS[0][2]
  config.entropy.decay = 0.9999  # per training step

  config.curriculum = ml_collections.ConfigDict()
  config.curriculum.start_level = 1
  config.curriculum.threshold = 0.05
  config.curriculum.window = 100

  config.data = ml_collections.ConfigDict()
  config.data.task = "access" if small else "listk"
  config.data.memory_size = 8 if small else 24
  config.data.max_length = 4 if small else 10
  config.data.large_memory = 14 if small else 44
  config.data.large_length = 8 if small else 20
  config.data.large_timesteps = 8 if small else 30
  config.data.pool_size = 6400
  config.data.test_examples = 512
  config.data.seed = 0

  config.train = ml_collections.ConfigDict()
  # None: as many runs at once as the device memory holds (gradnoise.devices)
  config.train.runs_per_batch = 8 if small else None
  config.train.eval_every_epochs = 2 if small else 10
  config.train.eval_batch_size = 512
  config.train.checkpoint_every_epochs = 5
  return config


def get_sweep(arg: str = "small") -> list[dict]:
  noise = values("noise.eta", [0.0, 0.3])
  if arg == "small":
    return product(noise, seeds(4))
  settings = zipped(values("optimizer.learning_rate", [s[0] for s in SETTINGS]),
                    values("clip.norm", [s[1] for s in SETTINGS]),
                    values("entropy.start", [s[2] for s in SETTINGS]))
  return product(settings, noise, seeds(100))
