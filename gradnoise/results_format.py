"""The files a sweep leaves in its work dir for readers, and the columns of results.csv.

Written by :mod:`gradnoise.workdir` (through :mod:`gradnoise.launch`), read by
:mod:`gradnoise.report`; standard library only, so either side imports it cheaply.

- ``config.json``: ``{"config": <resolved base config, nested>, "sweep": [<dotted field ->
  value per run, seed included>], ...}``.
- ``metrics.jsonl``: one JSON object per run and epoch: ``run``, ``epoch``, ``step`` (see
  :data:`ROW_KEYS`) and the metrics logged then (``train_*``, ``<split>_*``, ``state_*``).
- ``results.csv``: one row per finished run, columns :func:`results_columns`: ``run`` (its
  index in the sweep), the swept fields other than seed (first-seen order), ``seed``, the
  final metrics (:func:`metric_columns`) and ``diverged`` (``true``/``false``). Cells are
  :func:`format_cell` of the value.
"""

from __future__ import annotations

import json
import math
from typing import Any, Iterable, Mapping, Sequence

CONFIG_FILE, RESULTS_FILE, METRICS_FILE = "config.json", "results.csv", "metrics.jsonl"
RUN, SEED, DIVERGED = "run", "seed", "diverged"
# The metrics that lead results.csv when present, in this order; the others follow.
LEADING_METRICS = ("test_accuracy", "best_test_accuracy", "train_loss")
# metrics.jsonl keys that place a row rather than measure something.
ROW_KEYS = ("run", "epoch", "step")
# Config fields that decide how runs are executed and logged, not what they compute (runs
# differing only in these give the same numbers): readers never group or pair runs on them.
EXECUTION_FIELDS = ("train.runs_per_batch", "train.checkpoint_every_epochs",
                    "train.eval_batch_size", "train.diagnostics", "train.diagnostics_per_leaf")


def metric_columns(results: Iterable[Mapping[str, Any]]) -> list[str]:
  """The metric columns of results.csv for these per-run results: :data:`LEADING_METRICS`
  that any run has, then every other key in first-seen order (``diverged`` excluded)."""
  results = list(results)
  metrics = [m for m in LEADING_METRICS if any(m in r for r in results)]
  for result in results:
    metrics += [k for k in result if k not in metrics and k != DIVERGED]
  return metrics


def results_columns(swept: Sequence[str], metrics: Sequence[str]) -> list[str]:
  """The header of results.csv: run, the swept fields (seed excluded), seed, metrics,
  diverged."""
  return [RUN, *(f for f in swept if f != SEED), SEED, *metrics, DIVERGED]


def split_columns(header: Sequence[str]) -> tuple[list[str], list[str]]:
  """The swept fields and the metric columns of a results.csv header (ValueError if it
  lacks ``run`` or ``seed``)."""
  first, seed = header.index(RUN) + 1, header.index(SEED)
  return list(header[first:seed]), [c for c in header[seed + 1:] if c != DIVERGED]


def format_cell(value: Any) -> str:
  """A results.csv cell: ``true``/``false``, floats by ``repr`` (``nan``, ``inf``)."""
  if isinstance(value, bool):
    return "true" if value else "false"
  if isinstance(value, float):
    return repr(value) if math.isfinite(value) else str(value)
  return str(value)


def parse_cell(text: str) -> Any:
  """A results.csv cell back as a value: None if empty, bool, number, JSON list, or the
  string itself."""
  if text == "":
    return None
  if text.lower() in ("true", "false"):
    return text.lower() == "true"
  try:
    return json.loads(text)
  except ValueError:
    pass
  try:
    return float(text)
  except ValueError:
    return text
