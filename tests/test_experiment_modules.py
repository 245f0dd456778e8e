"""Experiments found by module path or file, and the rules of the Experiment interface."""

import io
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gradnoise import experiment, fields, run, trainer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# A complete experiment module, as a user would write it outside this repository:
# linear regression on generated data.
USER_EXPERIMENT = textwrap.dedent('''
    import jax, jax.numpy as jnp, numpy as np
    from gradnoise import experiment, fields

    def load_data(config):
      rng = np.random.default_rng(config.data.seed)
      x = rng.normal(size=(256, 4)).astype(np.float32)
      y = x @ np.array([1.0, -2.0, 0.5, 3.0], np.float32)
      return experiment.Dataset(train={"x": x[:192], "y": y[:192]},
                                evals={"test": {"x": x[192:], "y": y[192:]}},
                                description="generated regression data")

    def init_params(key, batch, hp, config):
      return {"w": jax.random.normal(key, (batch["x"].shape[-1],)) * hp["init_scale"]}

    def loss_fn(params, batch, key, hp, config):
      err = batch["x"] @ params["w"] - batch["y"]
      return jnp.mean(err ** 2), {}

    def eval_fn(params, batch, hp, config):
      return {"mse": (batch["x"] @ params["w"] - batch["y"]) ** 2}

    EXPERIMENT = experiment.Experiment(
        name="user_regression",
        traced_fields=("model.init_scale",),
        fields={"model.init_scale": fields.number(0), "data.seed": fields.integer(0)},
        load_data=load_data,
        hparams=lambda config: {"init_scale": config.model.init_scale},
        init_params=init_params, loss_fn=loss_fn, eval_fn=eval_fn,
        summary_metric="test_mse")
''')

USER_CONFIG = textwrap.dedent('''
    import ml_collections
    from gradnoise.sweep import product, seeds, values

    def get_config(arg=""):
      c = ml_collections.ConfigDict()
      c.experiment = "EXPERIMENT_NAME"
      c.seed, c.num_epochs, c.batch_size = 0, 2, 32
      c.optimizer = dict(name="sgd", learning_rate=0.05, decay_every_epochs=0,
                         decay_factor=1.0)
      c.clip = dict(norm=10.0, per_leaf=False)
      c.noise = dict(schedule="annealed", eta=0.01, gamma=0.55, std=0.0)
      c.model = dict(init_scale=0.1)
      c.data = dict(seed=0)
      c.train = dict(runs_per_batch=8, eval_every_epochs=1, eval_batch_size=64,
                     checkpoint_every_epochs=0)
      return c

    def get_sweep(arg=""):
      return product(values("noise.eta", [0.0, 0.01]), seeds(2))
''')


def write_user_project(folder, experiment_name):
  package = folder / "mylab"
  package.mkdir(parents=True)
  (package / "__init__.py").write_text("")
  (package / "regression.py").write_text(USER_EXPERIMENT)
  config = folder / "my_config.py"
  config.write_text(USER_CONFIG.replace("EXPERIMENT_NAME", experiment_name))
  return config


@pytest.mark.parametrize("how", ["dotted", "file"])
def test_an_experiment_outside_the_repo_runs(tmp_path, how):
  project = tmp_path / "project"
  name = "mylab.regression" if how == "dotted" else str(project / "mylab" / "regression.py")
  config = write_user_project(project, name)
  env = {**os.environ, "PYTHONPATH": str(project) if how == "dotted" else ""}
  proc = subprocess.run([sys.executable, "-m", "gradnoise.run", f"--config={config}",
                         f"--workdir={tmp_path / 'wd'}"], cwd=tmp_path, env=env,
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "plan: 4 runs in 1 compile group(s)" in proc.stdout
  rows = (tmp_path / "wd" / "results.csv").read_text().splitlines()
  assert rows[0] == ("run,noise.eta,seed,train_loss,test_mse,train_clipped_fraction,"
                     "train_clipped_grad_norm,train_clipped_grad_norm_max,train_grad_norm,"
                     "train_grad_norm_max,train_noise_norm,train_noise_norm_max,"
                     "train_noise_to_grad,train_noise_to_grad_max,best_test_mse,diverged")
  assert len(rows) == 5


def test_an_unknown_experiment_lists_the_built_in_ones(tmp_path):
  err = io.StringIO()
  code = run.main(["gradnoise.run", f"--config={REPO}/configs/mnist_mlp.py:quick",
                   "--config.experiment=mnist_mpl", f"--workdir={tmp_path / 'wd'}"],
                  io.StringIO(), err)
  assert code == 2
  assert "built-in experiment (gru4rec, memnet, mnist_mlp, neural_gpu, neural_programmer, nram)" in err.getvalue()
  assert "(from --config.experiment)" in err.getvalue()


def test_a_module_without_experiment_is_refused(tmp_path):
  (tmp_path / "empty_module.py").write_text("X = 1\n")
  with pytest.raises(experiment.UsageError, match="has no EXPERIMENT"):
    experiment.load(str(tmp_path / "empty_module.py"))


def test_a_missing_import_inside_an_experiment_is_not_hidden(tmp_path):
  (tmp_path / "needs_torch.py").write_text("import no_such_package_xyz\n")
  with pytest.raises(ModuleNotFoundError, match="no_such_package_xyz"):
    experiment.load(str(tmp_path / "needs_torch.py"))


def test_reading_a_traced_field_inside_the_program_raises(tmp_path):
  from configs import mnist_mlp as mnist_configs
  from experiments import mnist_mlp
  config = mnist_configs.get_config("quick")
  config.model.depth, config.model.width, config.batch_size = 1, 8, 16

  def loss_fn(params, batch, key, hp, config):
    scale = config.model.dropout_rate  # traced: differs between the runs of a group
    return sum(jnp.sum(leaf) for leaf in jax.tree.leaves(params)) * scale, {}

  bad = experiment.Experiment(**{**mnist_mlp.EXPERIMENT.__dict__, "loss_fn": loss_fn})
  program = trainer.build_program(bad, config, num_train=32)
  data = {"x": np.zeros((32, 784), np.float32), "y": np.zeros(32, np.int32)}
  hp = trainer.stack_hparams([trainer.run_hparams(config, bad)], 1)
  state = program.init(hp, data)
  with pytest.raises(experiment.TracedFieldError,
                     match=r"config field model.dropout_rate is traced .* read it from hp"):
    program.train_epoch(state, hp, data, np.int32(0))


def test_group_config_reads_untraced_fields_and_code_choices():
  import ml_collections
  config = ml_collections.ConfigDict({"model": {"width": 8, "rate": 0.5}, "seed": 1})
  group = experiment.GroupConfig(config, ["model.rate", "seed"], {"dropout": True})
  assert group.model.width == 8 and group["model"]["width"] == 8
  assert group.code_choices == {"dropout": True} and "model" in group
  for read in (lambda: group.model.rate, lambda: group["seed"], lambda: group.model["rate"]):
    with pytest.raises(experiment.TracedFieldError):
      read()
  with pytest.raises(AttributeError, match="no field 'model.depth'"):
    group.model.depth  # noqa: B018


def test_declared_fields_cover_the_example_module(tmp_path):
  folder = tmp_path / "p"
  write_user_project(folder, "unused")
  module = experiment.load(str(folder / "mylab" / "regression.py"))
  assert set(module.fields) == {"model.init_scale", "data.seed"}
  assert isinstance(module.fields["model.init_scale"], fields.Field)


def test_resume_after_editing_the_experiment_is_refused(tmp_path):
  project = tmp_path / "project"
  module = project / "mylab" / "regression.py"
  config = write_user_project(project, str(module))
  argv = ["gradnoise.run", f"--config={config}", "--no_sweep", f"--workdir={tmp_path / 'wd'}"]
  assert run.main(argv, io.StringIO(), io.StringIO()) == 0
  module.write_text(USER_EXPERIMENT.replace("jnp.mean(err ** 2)", "jnp.mean(jnp.abs(err))"))
  err = io.StringIO()
  assert run.main(argv, io.StringIO(), err) == 2
  assert "experiment_source" in err.getvalue() and "--accept_env_change" in err.getvalue()


BAD_MODELS = {
    # a model whose output does not fit the loss: caught before anything is written
    "wrong_shape": ("    return jnp.mean((batch['x'] @ params['w']) - batch['y'][:7]) ** 2, {}",
                    "its model cannot be built or trained"),
    # a traced field read from the config inside the compiled program
    "traced_read": ("    return jnp.mean(batch['x'] @ params['w'] * config.model.init_scale), {}",
                    "config field model.init_scale is traced"),
}


@pytest.mark.parametrize("case", sorted(BAD_MODELS))
def test_a_model_that_cannot_train_is_one_error_before_writing(tmp_path, case):
  project = tmp_path / "project"
  module = project / "mylab" / "regression.py"
  config = write_user_project(project, str(module))
  body, message = BAD_MODELS[case]
  source = USER_EXPERIMENT.replace(
      "  err = batch[\"x\"] @ params[\"w\"] - batch[\"y\"]\n  return jnp.mean(err ** 2), {}",
      body.replace("    ", "  ", 1))
  assert source != USER_EXPERIMENT
  module.write_text(source)
  err = io.StringIO()
  code = run.main(["gradnoise.run", f"--config={config}", "--no_sweep",
                   f"--workdir={tmp_path / 'wd'}"], io.StringIO(), err)
  lines = err.getvalue().strip().splitlines()
  assert code == 2 and len(lines) == 1 and message in lines[0], err.getvalue()
  assert str(module) in lines[0]  # the line of the user's code is named
  assert not (tmp_path / "wd").exists()
