"""Sweeps: lists of override dicts built from small combinators, and their expansion.

A config file's ``get_sweep(arg)`` returns a list of dicts mapping dotted config names to
values, e.g. ``product(values("noise.eta", [0.0, 0.01]), seeds(20))``.
"""

from __future__ import annotations

import itertools
from typing import Any, Iterable, Sequence

import ml_collections
import numpy as np

from gradnoise.errors import UsageError

Overrides = dict[str, Any]


def values(name: str, options: Iterable[Any]) -> list[Overrides]:
  """One override dict per value: ``values("noise.eta", [0, .01])``."""
  return [{name: v} for v in options]


def seeds(n: int, start: int = 0) -> list[Overrides]:
  """``n`` runs with seeds ``start, ..., start + n - 1``."""
  return values("seed", range(start, start + n))


def fixed(**fields: Any) -> list[Overrides]:
  """A single override dict; dotted names are written with ``__`` (``clip__norm=10``)."""
  return [{k.replace("__", "."): v for k, v in fields.items()}]


def product(*factors: Sequence[Overrides]) -> list[Overrides]:
  """Cartesian product; later factors vary fastest."""
  out = []
  for combo in itertools.product(*factors):
    merged: Overrides = {}
    for part in combo:
      merged.update(part)
    out.append(merged)
  return out


def zipped(*factors: Sequence[Overrides]) -> list[Overrides]:
  """Element-wise merge of equally long lists."""
  lengths = {len(f) for f in factors}
  if len(lengths) > 1:
    raise ValueError(f"zipped: all factors need the same length, got {sorted(lengths)}.")
  return [product(*[[p] for p in parts])[0] for parts in zip(*factors)]


def concat(*sweeps: Sequence[Overrides]) -> list[Overrides]:
  """Runs of several sweeps one after the other."""
  return [dict(o) for s in sweeps for o in s]


def apply_overrides(config: ml_collections.ConfigDict, overrides: Overrides,
                    what: str = "sweep") -> ml_collections.ConfigDict:
  """A copy of ``config`` with the dotted ``overrides`` set; UsageError on bad names/types.

  ``what`` names the overrides' origin in messages ("sweep", "overrides").
  """
  config = ml_collections.ConfigDict(config.to_dict(preserve_field_references=False))
  config.lock()
  if not isinstance(overrides, dict) or not all(isinstance(k, str) for k in overrides):
    raise UsageError(f"{what} entry {overrides!r} is not a dict of dotted field names to "
                     "values, e.g. {'noise.eta': 0.01}.")
  for name, value in overrides.items():
    *path, leaf = name.split(".")
    node = config
    if isinstance(value, np.generic):
      value = value.item()  # numpy scalars from np.arange, np.float32, ...
    try:
      for part in path:
        node = node[part]
      if leaf not in node:
        raise KeyError(leaf)
      if isinstance(node[leaf], ml_collections.ConfigDict):
        raise UsageError(f"{what} sets {name}, a group of fields, to {value!r}; set its "
                         f"fields one by one ({', '.join(f'{name}.{k}' for k in node[leaf])}).",
                         field=name)
      node[leaf] = value
    except (KeyError, AttributeError, TypeError) as e:
      if isinstance(e, TypeError) and leaf in getattr(node, "keys", lambda: ())():
        raise UsageError(f"{what} sets {name}={value!r}: wrong type ({e}).",
                         field=name) from None
      raise UsageError(f"{what} sets unknown config field {name!r}; known fields: "
                       f"{', '.join(flat_names(config))}.", field=name) from None
  return config


def get_field(config: ml_collections.ConfigDict, dotted: str) -> Any:
  """The value of the dotted field ``dotted`` (e.g. ``"noise.eta"``) of ``config``."""
  node = config
  for part in dotted.split("."):
    node = node[part]
  return node


def flat_names(config: ml_collections.ConfigDict, prefix: str = "") -> list[str]:
  """Every leaf field of ``config`` by dotted name."""
  names = []
  for k in sorted(config.keys()):
    v = config[k]
    if isinstance(v, ml_collections.ConfigDict):
      names += flat_names(v, f"{prefix}{k}.")
    else:
      names.append(prefix + k)
  return names


def swept_fields(sweep: Sequence[Overrides]) -> list[str]:
  """The dotted names any run of ``sweep`` sets, in first-seen order."""
  names: dict[str, None] = {}
  for overrides in sweep:
    names.update(dict.fromkeys(overrides))
  return list(names)
