"""Command-line overrides ``--config.a.b=value``: split from the other flags, parsed by type.

A value is parsed by the type of the field it overrides (the config file's value, or the
declared type of a ``placeholder``): ``true``/``false`` for booleans, integers, floats
(``inf`` included), strings as given, tuples as ``(1, 2)`` or ``1,2``. ``None`` sets None
for every field; whether a field accepts None is decided by its declaration
(:mod:`gradnoise.fields`), like every other value.
"""

from __future__ import annotations

import ast
import difflib
import re
from typing import Any, Sequence

import ml_collections

from gradnoise import fields
from gradnoise.errors import UsageError

PREFIX = "--config."
_TRUE, _FALSE = ("true", "1", "yes", "on"), ("false", "0", "no", "off")


def split_args(argv: Sequence[str]) -> tuple[list[str], dict[str, str]]:
  """Separates ``--config.<field>=<value>`` (or ``--config.<field> <value>``) from argv.

  Returns the other arguments and field -> value text, in command-line order; a field
  given twice takes its last value (as absl flags do).
  """
  rest, overrides = [], {}
  i = 0
  while i < len(argv):
    arg = argv[i]
    i += 1
    if not arg.startswith(PREFIX):
      rest.append(arg)
      continue
    name, eq, text = arg[len(PREFIX):].partition("=")
    if not eq:
      if i < len(argv) and not argv[i].startswith("--"):
        text, i = argv[i], i + 1
      else:
        text = "true"
    overrides.pop(name, None)
    overrides[name] = text
  return rest, overrides


def _field_type(config: ml_collections.ConfigDict, name: str) -> type | None:
  *path, leaf = name.split(".")
  node = config
  for part in path:
    node = node[part]
  value = node[leaf]
  if value is not None:
    return type(value)
  try:
    return node.get_ref(leaf).get_type()
  except (AttributeError, KeyError, TypeError, ValueError):
    return None


def _parse_sequence(text: str, like: Sequence[Any]) -> tuple:
  try:
    value = ast.literal_eval(text)
  except (ValueError, SyntaxError):
    value = tuple(t.strip() for t in text.strip("()[]").split(",") if t.strip())
  if not isinstance(value, (tuple, list)):
    value = (value,)
  kind = type(like[0]) if like else None
  if kind in (int, float):
    value = tuple(_parse_scalar(str(v), kind) for v in value)
  return tuple(value)


def _parse_scalar(text: str, kind: type) -> Any:
  if kind is bool:
    if text.lower() in _TRUE + _FALSE:
      return text.lower() in _TRUE
    raise ValueError("not a boolean (true or false)")
  if kind is int:
    if not re.fullmatch(r"[+-]?\d+", text.strip(), re.ASCII):
      raise ValueError("not an integer")
    return int(text)
  if kind is float:
    if not text.isascii():
      raise ValueError("not a number")
    try:
      return float(text)
    except ValueError:
      raise ValueError("not a number") from None
  return text


_KINDS = {"int": int, "float": float, "bool": bool, "str": str}


def parse_value(config: ml_collections.ConfigDict, name: str, text: str,
                field: fields.Field | None = None) -> Any:
  """The value of ``--config.<name>=<text>`` for ``config``; ValueError if it cannot be.

  The type comes from the field's declaration when given, else from the config's value.
  """
  if text == "None":
    return None
  if field is not None and field.kind == "ints":
    return _parse_sequence(text, (0,))
  kind = _KINDS.get(field.kind) if field is not None else _field_type(config, name)
  if kind in (tuple, list):
    *path, leaf = name.split(".")
    node = config
    for part in path:
      node = node[part]
    return _parse_sequence(text, node[leaf])
  if kind in (bool, int, float):
    return _parse_scalar(text, kind)
  if kind is None:
    try:
      return ast.literal_eval(text)
    except (ValueError, SyntaxError):
      return text
  return text


def apply(config: ml_collections.ConfigDict, overrides: dict[str, str],
          declared: dict[str, fields.Field] | None = None,
          origin: str = "the config") -> ml_collections.ConfigDict:
  """A copy of ``config`` with the command-line ``overrides`` (field -> text) set.

  Raises UsageError naming the flag for an unknown field (with the closest names) or a
  value that does not parse as the field's type (with what ``declared`` accepts).
  """
  names = list(fields.leaves(config))
  out = ml_collections.ConfigDict(config.to_dict(preserve_field_references=False))
  for name, text in overrides.items():
    if name not in names:
      close = difflib.get_close_matches(name, names, n=3, cutoff=0.6)
      hint = f"did you mean {' or '.join(close)}? " if close else ""
      raise UsageError(f"--config.{name}={text}: {origin} has no field {name!r}; {hint}"
                       f"its fields: {', '.join(names)}.", field=name)
    try:
      value = parse_value(config, name, text, (declared or {}).get(name))
    except ValueError as e:
      accepted = declared[name].accepted if declared and name in declared else "its type"
      raise UsageError(f"config field {name}={text!r} (from --config.{name}) is invalid: {e}; "
                       f"accepted: {accepted}.", field=name) from None
    *path, leaf = name.split(".")
    node = out
    for part in path:
      node = node[part]
    try:
      node[leaf] = value
    except TypeError as e:
      raise UsageError(f"config field {name}={text!r} (from --config.{name}) has the wrong "
                       f"type ({e}).", field=name) from None
  out.lock()
  return out
