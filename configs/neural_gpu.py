"""Experiment 5 of Neelakantan et al. (2015): Neural GPU on binary multiplication (Table 6).

Variants (``--config configs/neural_gpu.py:<variant>``):
  table6        the paper's scale: 20-bit training operands, 200-bit test operands, m = 24
                maps, 3^6 = 729 hyperparameter settings x 10 seeds, each with and without
                noise (eta 1.0, gamma 0.55, after clipping, Adam): 14580 runs, one compile
                group, 20k steps each. Needs accelerators: ~54 GFLOP per run-step (forward,
                backward and rematerialisation) and ~10 TFLOP per evaluation of 256
                200-bit examples, ~1.7e19 FLOP in all (our estimate, not measured on one).
  table6_small  8-bit training and 32-bit test operands, m = 12, learning rate {0.001,
                0.003} x 2 seeds, with and without noise (8 runs, one compile group),
                1500 steps each. Measured on 2 shared CPU cores: 0.78 s per step of all 8
                runs, 18-23 s per evaluation, ~25 s to compile: about 22 minutes. At this
                budget no run learns 8-bit multiplication, let alone 32-bit (3000 steps of
                one run reached the 5-bit curriculum stage, test bits at chance): it checks
                the pipeline and compares training progress (state_bits, the curriculum
                length reached, and train_seq_error), not the success counts.

Neelakantan et al. count, over 7290 runs (729 settings x 10 seeds) per arm, the runs whose
test error is below 1/2/3/5%. The paper does not list the 729 settings; ours vary six
numbers of Kaiser & Sutskever's reference trainer (neural_gpu_trainer.py flags), 3 values
each around its defaults: learning rate (0.001), init scale (1.0), gradient clipping
(1.0), dropout (0.15), starting pull (0.0005) and curriculum threshold (0.15). Batch 32,
r = 6 relaxation copies, pull x1.2 per curriculum success up to 0.1 and a curriculum
decision every 200 steps are the reference's defaults.
"""

import ml_collections

from gradnoise.sweep import product, seeds, values

VARIANTS = ("table6", "table6_small")


def get_config(arg: str = "table6_small") -> ml_collections.ConfigDict:
  if arg not in VARIANTS:
    raise ValueError(f"unknown variant {arg!r} of configs/neural_gpu.py; "
                     f"accepted: {', '.join(VARIANTS)}.")
  small = arg == "table6_small"
  config = ml_collections.ConfigDict()
  config.experiment = "neural_gpu"
  config.seed = 0
  config.batch_size = 32
  # An epoch is pool_size / batch_size steps.
  config.num_epochs = 15 if small else 100

  config.optimizer = ml_collections.ConfigDict()
  config.optimizer.name = "adam"
  config.optimizer.learning_rate = 0.001
  config.optimizer.decay_every_epochs = 0
  config.optimizer.decay_factor = 1.0

  config.clip = ml_collections.ConfigDict()
  config.clip.norm = 1.0  # global norm, as the reference's max_grad_norm
  config.clip.per_leaf = False

  config.noise = ml_collections.ConfigDict()
  config.noise.schedule = "annealed"
  config.noise.eta = 1.0  # 0 = no noise
  config.noise.gamma = 0.55
  config.noise.std = 0.001  # used by schedule=constant

  config.model = ml_collections.ConfigDict()
  config.model.maps = 12 if small else 24  # m
  config.model.width = 4  # rows of the state ("height" in the reference)
  config.model.cgrus = 2  # CGRUs per step
  config.model.dropout_rate = 0.15  # keep prob 1 - rate * 8 / max(8, input length)
  config.model.init_scale = 1.0  # the reference's init_weight
  config.model.remat = not small  # recompute each step in the backward pass (memory)

  config.relax = ml_collections.ConfigDict()
  config.relax.copies = 6  # r
  config.relax.pull = 0.0005  # starting weight of the pull term
  config.relax.pull_growth = 1.2  # x this per curriculum success ...
  config.relax.pull_max = 0.1  # ... up to this; then the copies are averaged

  config.curriculum = ml_collections.ConfigDict()
  config.curriculum.start_bits = 2
  config.curriculum.threshold = 0.15  # advance when the window's sequence error is below
  config.curriculum.window = 200  # steps per curriculum decision

  config.data = ml_collections.ConfigDict()
  config.data.task = "mul"  # mul | add
  config.data.train_bits = 8 if small else 20
  config.data.test_bits = 32 if small else 200
  config.data.pool_size = 3200 if small else 6400  # entries, each one example per length
  config.data.test_examples = 256
  config.data.seed = 0

  config.train = ml_collections.ConfigDict()
  # None: as many runs at once as the device memory holds (gradnoise.devices)
  config.train.runs_per_batch = 8 if small else None
  config.train.eval_every_epochs = 5 if small else 25
  config.train.eval_batch_size = 256 if small else 64
  config.train.checkpoint_every_epochs = 5
  return config


def get_sweep(arg: str = "table6_small") -> list[dict]:
  noise = values("noise.eta", [0.0, 1.0])
  if arg == "table6_small":
    return product(values("optimizer.learning_rate", [0.001, 0.003]), noise, seeds(2))
  grid = product(
      values("optimizer.learning_rate", [0.0003, 0.001, 0.003]),
      values("model.init_scale", [0.5, 1.0, 1.5]),
      values("clip.norm", [0.5, 1.0, 2.0]),
      values("model.dropout_rate", [0.05, 0.1, 0.15]),
      values("relax.pull", [0.0001, 0.0005, 0.0025]),
      values("curriculum.threshold", [0.1, 0.15, 0.25]),
  )
  return product(grid, noise, seeds(10))
