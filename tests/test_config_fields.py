"""Every field of every shipped config: a wrong type, an out-of-range value and (where not
allowed) None each exit 2 with one error line naming the field, and write nothing.

The bad values come from each field's declaration (gradnoise.fields), so a new field is
covered as soon as it is declared, and an undeclared field fails the run itself.
"""

import glob
import importlib.util
import io
import os

import pytest

from gradnoise import experiment as experiment_lib
from gradnoise import fields, run, trainer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG_FILES = sorted(glob.glob(os.path.join(REPO, "configs", "*.py")))
CONFIG_FILES = [f for f in CONFIG_FILES if not f.endswith("__init__.py")]
# Fields the base config must set to something valid for the others to be checked.
REQUIRED = {"memnet": {"data.path": "/nonexistent/babi"},
            "gru4rec": {"data.path": "/nonexistent/sessions.csv"}}


def _module(path):
  spec = importlib.util.spec_from_file_location("_config_under_test", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def bad_values(field: fields.Field) -> list[tuple[str, str]]:
  """(what, command-line text) pairs that ``field`` must refuse."""
  out = []
  wrong_type = {"int": "1.5", "float": "abc", "bool": "maybe", "ints": "abc"}.get(field.kind)
  if wrong_type:
    out.append(("wrong type", wrong_type))
  if field.kind in ("int", "float", "ints"):
    if field.low is not None:
      below = field.low if field.low_open else field.low - 1
    else:
      below = None
    above = None if field.high is None else (field.high if field.high_open else field.high + 1)
    value = below if below is not None else above
    if value is not None:
      value = int(value) if field.kind != "float" else float(value)
      out.append(("out of range", f"({value},)" if field.kind == "ints" else str(value)))
    if field.kind == "float":
      out.append(("nan", "nan"))
      if not field.inf:
        out.append(("inf", "inf"))
  elif field.kind == "str" and (field.choices or field.predicate):
    out.append(("out of range", "no_such_value"))
  if not field.none:
    out.append(("None", "None"))
  return out


def cases():
  for path in CONFIG_FILES:
    module = _module(path)
    config = module.get_config()
    experiment = experiment_lib.load(config.experiment)
    declared = {**trainer.FIELDS, **experiment.fields}
    for name in fields.leaves(config):
      for what, text in bad_values(declared[name]):
        yield pytest.param(path, config.experiment, name, text,
                           id=f"{os.path.basename(path)}:{name}:{what}")


@pytest.mark.parametrize("path, experiment, name, text", list(cases()))
def test_bad_value_is_one_error_naming_the_field(tmp_path, path, experiment, name, text):
  required = [f"--config.{k}={v}" for k, v in REQUIRED.get(experiment, {}).items()
              if k != name]
  out, err = io.StringIO(), io.StringIO()
  workdir = tmp_path / "wd"
  argv = ["gradnoise.run", f"--config={path}", *required, f"--config.{name}={text}",
          f"--workdir={workdir}"]
  code = run.main(argv, out, err)
  errors = [l for l in err.getvalue().splitlines() if l.startswith("error:")]
  assert code == 2, (out.getvalue(), err.getvalue())
  assert len(errors) == 1 and "Traceback" not in err.getvalue()
  assert name in errors[0], errors[0]
  assert not workdir.exists()


def test_every_shipped_config_declares_all_its_fields():
  for path in CONFIG_FILES:
    module = _module(path)
    for variant in getattr(module, "VARIANTS", (None,)):
      config = module.get_config(variant) if variant else module.get_config()
      experiment = experiment_lib.load(config.experiment)
      declared = {**trainer.FIELDS, **experiment.fields}
      assert set(fields.leaves(config)) <= set(declared), (path, variant)


def test_sweep_values_are_reported_as_coming_from_the_sweep(tmp_path):
  # memnet's sweep sets data.task to each of its 6 tasks; tasks overridden to (1, 4).
  out, err = io.StringIO(), io.StringIO()
  code = run.main(["gradnoise.run", f"--config={REPO}/configs/memnet_babi.py:small",
                   "--config.data.path=/nonexistent/babi", "--config.data.tasks=1,4",
                   f"--workdir={tmp_path / 'wd'}"], out, err)
  line = err.getvalue().strip()
  assert code == 2 and line.count("error:") == 1
  assert "data.task=9" in line and "one of data.tasks [1, 4]" in line
  assert "set by the sweep of" in line and "memnet_babi.py:small, run 16" in line


@pytest.mark.parametrize("field, value, ok", [
    (fields.integer(1), 1, True), (fields.integer(1), 0, False), (fields.integer(1), True, False),
    (fields.integer(1), 2.0, False), (fields.number(0, low_open=True), 0.0, False),
    (fields.number(0, low_open=True, inf="none"), float("inf"), True),
    (fields.number(0), float("inf"), False), (fields.number(0), float("nan"), False),
    (fields.number(0, 1, high_open=True), 1.0, False), (fields.choice("a", "b"), "c", False),
    (fields.optional(fields.number(0), "off"), None, True), (fields.number(0), None, False),
    (fields.integers(1, 20), (1, 20), True), (fields.integers(1, 20), (), False),
    (fields.integers(1, 20), (0,), False), (fields.flag(), 1, False),
])
def test_field_accepts(field, value, ok):
  assert field.accepts(value) is ok


def test_accepted_wording():
  assert fields.number(0, low_open=True).accepted == "a finite (float32) number > 0"
  assert (fields.optional(fields.number(0, low_open=True, inf="no clipping"), "no clipping")
          .accepted == "None (no clipping) or a finite (float32) number > 0, or inf (no clipping)")
  assert fields.number(0, 1, high_open=True).accepted == "a finite (float32) number in [0, 1)"
  assert fields.integer(0, 2**31 - 1).accepted == "an integer in [0, 2147483647]"
