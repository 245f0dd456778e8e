"""Declared config fields: what each field accepts, checked before anything is written.

The trainer declares its own fields (``trainer.FIELDS``) and every experiment declares its
(``Experiment.fields``). :func:`check` refuses a config with an undeclared field or a value
its declaration does not accept, with one message naming the field, the value, what is
accepted and where the value came from. Cross-field rules (``data.task`` among
``data.tasks``) stay in the experiment's ``validate``.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from typing import Any, Callable, Mapping

import ml_collections

from gradnoise.errors import UsageError


FLOAT32_MAX = 3.4028234663852886e38
REQUIRED = object()  # a Field's default when the config must set the field itself


@dataclasses.dataclass(frozen=True)
class Field:
  """What one config field accepts.

  Attributes:
    kind: ``int``, ``float``, ``bool``, ``str`` or ``ints`` (a tuple of integers).
    low, high: inclusive bounds of a number (of each element for ``ints``), or None.
    low_open, high_open: the bound itself is excluded.
    choices: the accepted strings (empty: any string).
    none: what None means when it is accepted ("" when it is not).
    inf: what ``inf`` means when an otherwise bounded float accepts it ("" when not).
    predicate, description: a custom test and its wording (e.g. "an optax optimizer").
    default: the value a config that lacks the field gets (:func:`complete`), or REQUIRED.
  """

  kind: str
  low: float | None = None
  high: float | None = None
  low_open: bool = False
  high_open: bool = False
  choices: tuple[str, ...] = ()
  none: str = ""
  inf: str = ""
  predicate: Callable[[Any], bool] | None = None
  description: str = ""
  default: Any = REQUIRED

  def accepts(self, value: Any) -> bool:
    if value is None:
      return bool(self.none)
    if self.kind == "bool":
      return isinstance(value, bool)
    if self.kind == "str":
      return isinstance(value, str) and value != "" and (
          not self.choices or value in self.choices) and (
              self.predicate is None or self.predicate(value))
    if self.kind == "ints":
      return (isinstance(value, (tuple, list)) and len(value) > 0
              and all(self._number_ok(v, integral=True) for v in value))
    ok = self._number_ok(value, integral=self.kind == "int")
    return ok and (self.predicate is None or self.predicate(value))

  def _number_ok(self, value: Any, integral: bool) -> bool:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
      return False
    if integral and not isinstance(value, numbers.Integral):
      return False
    if math.isnan(value):
      return False
    if math.isinf(value):
      return bool(self.inf) and value > 0
    if not integral and abs(value) > FLOAT32_MAX:  # the trainer holds numbers as float32
      return False
    if self.low is not None and (value < self.low or (self.low_open and value == self.low)):
      return False
    return self.high is None or not (value > self.high or (self.high_open and value == self.high))

  @property
  def accepted(self) -> str:
    """The accepted values in words, e.g. ``a finite number > 0``."""
    if self.description:
      text = self.description
    elif self.kind == "bool":
      text = "true or false"
    elif self.kind == "str":
      text = "one of " + ", ".join(self.choices) if self.choices else "a non-empty string"
    else:
      noun = {"int": "an integer", "float": "a finite (float32) number",
              "ints": "a non-empty tuple of integers"}[self.kind]
      text = noun + self._range()
    if self.inf:
      text += f", or inf ({self.inf})"
    if self.none:
      text = f"None ({self.none}) or " + text
    return text

  def _range(self) -> str:
    low, high = _fmt(self.low), _fmt(self.high)
    if self.low is not None and self.high is not None:
      return (f" in {'(' if self.low_open else '['}{low}, {high}"
              f"{')' if self.high_open else ']'}")
    if self.low is not None:
      return f" {'>' if self.low_open else '>='} {low}"
    if self.high is not None:
      return f" {'<' if self.high_open else '<='} {high}"
    return ""


def _fmt(x: float | None) -> str:
  return "" if x is None else (str(int(x)) if float(x).is_integer() and abs(x) < 1e15 else str(x))


def integer(low: int | None = None, high: int | None = None, *,
            default: Any = REQUIRED) -> Field:
  """An integer in [low, high] (either bound may be None)."""
  return Field("int", low, high, default=default)


def number(low: float | None = None, high: float | None = None, *, low_open: bool = False,
           high_open: bool = False, inf: str = "", default: Any = REQUIRED) -> Field:
  """A finite real number in the given range; ``inf`` says what +inf means if accepted."""
  return Field("float", low, high, low_open, high_open, inf=inf, default=default)


def choice(*options: str, default: Any = REQUIRED) -> Field:
  """One of the given strings."""
  return Field("str", choices=tuple(options), default=default)


def text(predicate: Callable[[str], bool] | None = None, description: str = "") -> Field:
  """A string, optionally tested by ``predicate`` (described by ``description``)."""
  return Field("str", predicate=predicate, description=description)


def flag(*, default: Any = REQUIRED) -> Field:
  """A boolean."""
  return Field("bool", default=default)


def integers(low: int | None = None, high: int | None = None) -> Field:
  """A non-empty tuple of integers, each in [low, high]."""
  return Field("ints", low, high)


def optional(field: Field, meaning: str) -> Field:
  """``field`` that also accepts None, which means ``meaning`` (e.g. "no clipping")."""
  return dataclasses.replace(field, none=meaning)


def leaves(config: ml_collections.ConfigDict, prefix: str = "") -> dict[str, Any]:
  """Every leaf field of ``config`` by dotted name, in sorted order."""
  out: dict[str, Any] = {}
  for k in sorted(config.keys()):
    v = config[k]
    if isinstance(v, ml_collections.ConfigDict):
      out.update(leaves(v, f"{prefix}{k}."))
    else:
      out[prefix + k] = v
  return out


def complete(config: ml_collections.ConfigDict,
             declared: Mapping[str, Field]) -> ml_collections.ConfigDict:
  """A copy of ``config`` with every declared field it lacks that has a default set to it
  (so that fields added to the trainer later do not break existing config files)."""
  out = ml_collections.ConfigDict(config.to_dict(preserve_field_references=False))
  present = leaves(out)
  for name, field in declared.items():
    if name in present or field.default is REQUIRED:
      continue
    *path, leaf = name.split(".")
    node = out
    for part in path:
      if part not in node:
        node[part] = ml_collections.ConfigDict()
      node = node[part]
    node[leaf] = field.default
  out.lock()
  return out


def check(config: ml_collections.ConfigDict, declared: Mapping[str, Field],
          source: Callable[[str], str] = lambda name: "", owner: str = "the experiment") -> None:
  """Raises UsageError for the first undeclared or invalid field of ``config``.

  Args:
    config: the resolved config of one run.
    declared: dotted field name -> Field.
    source: dotted name -> where its value came from, e.g. ``" (from --config.x)"``.
    owner: who declares the fields, for the undeclared-field message.
  """
  present = leaves(config)
  for name, field in declared.items():
    if name not in present and field.default is REQUIRED:
      raise UsageError(f"config field {name} is declared by {owner} but missing from the "
                       f"config{source(name)}; add it to the config file's get_config.",
                       field=name)
  for name, value in present.items():
    field = declared.get(name)
    if field is None:
      raise UsageError(f"config field {name}{source(name)} is not declared by {owner}; "
                       f"declared: {', '.join(sorted(declared))}.", field=name)
    if not field.accepts(value):
      raise UsageError(f"config field {name}={value!r}{source(name)} is invalid; "
                       f"accepted: {field.accepted}.", field=name)
