"""Reading work dirs: each run's config, final metrics (results.csv) and curve
(metrics.jsonl), tolerating a sweep that is still being written."""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
import sys
from typing import Any, Sequence

from gradnoise import results_format as fmt
from gradnoise.errors import UsageError

_MISSING = object()


def warn(message: str) -> None:
  """One ``warning:`` line on stderr."""
  print(f"warning: {message}", file=sys.stderr)


def to_float(value: Any) -> float:
  """``value`` as a float; NaN if it is none."""
  try:
    return float(value)
  except (TypeError, ValueError):
    return math.nan


@dataclasses.dataclass
class Run:
  """One run of one work dir.

  Attributes:
    workdir: the work dir it was read from.
    run: its id in that work dir.
    overrides: dotted field -> value set for this run (results.csv row or sweep entry).
    config: the work dir's resolved base config (nested dicts), for fields not overridden.
    seed: its seed.
    final: results.csv metrics (name -> float); None while the run is unfinished.
    diverged: results.csv ``diverged``.
    curve: its metrics.jsonl rows, in file order.
  """

  workdir: str
  run: int
  overrides: dict[str, Any]
  config: dict[str, Any]
  seed: Any
  final: dict[str, float] | None = None
  diverged: bool = False
  curve: list[dict[str, Any]] = dataclasses.field(default_factory=list)

  def get(self, field: str) -> Any:
    """The run's value of a dotted config field (None if unknown)."""
    if field in self.overrides:
      return self.overrides[field]
    value = _lookup(self.config, field)
    return None if value is _MISSING else value


@dataclasses.dataclass
class SweepData:
  """The runs of one or more work dirs.

  Attributes:
    workdirs: the work dirs, as given.
    runs: every run, by work dir then run id.
    swept: fields any work dir sweeps (seed excluded), first-seen order.
    metrics: results.csv metric columns.
    curve_metrics: metrics.jsonl metric keys.
    known_fields: swept fields and every leaf of the base configs.
  """

  workdirs: list[str]
  runs: list[Run]
  swept: list[str]
  metrics: list[str]
  curve_metrics: list[str]
  known_fields: set[str]


def _lookup(config: Any, dotted: str) -> Any:
  node = config
  for part in dotted.split("."):
    if not isinstance(node, dict) or part not in node:
      return _MISSING
    node = node[part]
  return node


def leaves(config: dict[str, Any], prefix: str = "") -> list[str]:
  """The dotted names of a nested config's leaves, in its order."""
  names = []
  for key, value in config.items():
    if isinstance(value, dict):
      names += leaves(value, f"{prefix}{key}.")
    else:
      names.append(prefix + key)
  return names


def _read_results(path: str) -> tuple[list[str], list[dict[str, str]]]:
  """results.csv: its header and its well-formed rows."""
  with open(path, newline="") as f:
    rows = list(csv.reader(f))
  if not rows:
    return [], []
  header, out = rows[0], []
  if fmt.RUN not in header or fmt.SEED not in header:
    raise UsageError(f"{path} lacks a '{fmt.RUN}' or '{fmt.SEED}' column; columns: "
                     f"{', '.join(header)}.")
  for i, row in enumerate(rows[1:], start=2):
    if len(row) != len(header) or not row[header.index(fmt.RUN)].isdigit():
      warn(f"{path} line {i} is malformed; skipped.")
      continue
    out.append(dict(zip(header, row)))
  return header, out


def _read_metrics(path: str) -> list[dict[str, Any]]:
  """metrics.jsonl rows; a last line that does not parse (still being written) is dropped."""
  with open(path) as f:
    lines = f.read().split("\n")
  rows = []
  for i, line in enumerate(lines):
    if not line.strip():
      continue
    try:
      row = json.loads(line)
    except ValueError:
      if any(later.strip() for later in lines[i + 1:]):
        warn(f"{path} line {i + 1} is not JSON; skipped.")
      continue
    if isinstance(row, dict) and isinstance(row.get("run"), int) and "step" in row:
      rows.append(row)
    else:
      warn(f"{path} line {i + 1} has no integer 'run' and 'step'; skipped.")
  return rows


def _load_workdir(path: str) -> tuple[list[Run], list[str], list[str]]:
  """The runs of one work dir, its swept fields and its results metric columns."""
  record: dict[str, Any] = {}
  config_path = os.path.join(path, fmt.CONFIG_FILE)
  if os.path.exists(config_path):
    try:
      with open(config_path) as f:
        record = json.load(f)
    except (OSError, ValueError) as e:
      raise UsageError(f"{config_path} is unreadable ({e}).") from None
  config = record.get("config") or {}
  sweep = record.get("sweep") or []
  swept = [k for o in sweep for k in o if k != fmt.SEED]
  results_path = os.path.join(path, fmt.RESULTS_FILE)
  metrics_path = os.path.join(path, fmt.METRICS_FILE)
  has_results, has_metrics = os.path.exists(results_path), os.path.exists(metrics_path)
  if not has_results and not has_metrics:
    warn(f"{path} has no {fmt.RESULTS_FILE} or {fmt.METRICS_FILE}; it contributes nothing.")
    return [], [], []
  if not has_results:
    warn(f"{path} has no {fmt.RESULTS_FILE} yet; its runs appear in the curves only.")
  header, rows = _read_results(results_path) if has_results else ([], [])
  csv_swept, metric_names = fmt.split_columns(header) if header else ([], [])
  swept = list(dict.fromkeys(swept + csv_swept))

  def sweep_entry(run_id: int) -> dict[str, Any] | None:
    if not record:
      return None
    if not sweep:
      return {} if run_id == 0 else None
    return dict(sweep[run_id]) if run_id < len(sweep) else None

  runs: dict[int, Run] = {}
  for row in rows:
    run_id = int(row[fmt.RUN])
    overrides = sweep_entry(run_id) or {}
    overrides.update({f: fmt.parse_cell(row[f]) for f in csv_swept if row[f] != ""})
    seed = (fmt.parse_cell(row[fmt.SEED]) if row[fmt.SEED]
            else overrides.get(fmt.SEED, config.get(fmt.SEED)))
    overrides.pop(fmt.SEED, None)
    runs[run_id] = Run(path, run_id, overrides, config, seed,
                       final={m: to_float(fmt.parse_cell(row[m])) for m in metric_names},
                       diverged=fmt.parse_cell(row.get(fmt.DIVERGED, "")) is True)
  unplaced = set()
  for row in _read_metrics(metrics_path) if has_metrics else []:
    run_id = row["run"]
    if run_id not in runs:
      overrides = sweep_entry(run_id)
      if overrides is None:
        unplaced.add(run_id)
        continue
      seed = overrides.pop(fmt.SEED, config.get(fmt.SEED))
      runs[run_id] = Run(path, run_id, overrides, config, seed)
    runs[run_id].curve.append(row)
  if unplaced:
    warn(f"{len(unplaced)} runs in {metrics_path} are neither in {fmt.RESULTS_FILE} nor in "
         f"the sweep of {fmt.CONFIG_FILE}; skipped.")
  return [runs[k] for k in sorted(runs)], swept, metric_names


def load_runs(workdirs: Sequence[str]) -> SweepData:
  """Reads the runs of every work dir; UsageError if a dir is missing or none has runs."""
  if not workdirs:
    raise UsageError("give at least one WORKDIR (a directory written by gradnoise.run).")
  runs, swept, metrics, known = [], [], [], set()
  for path in workdirs:
    if not os.path.isdir(path):
      raise UsageError(f"work dir {path!r} does not exist or is not a directory.")
    dir_runs, dir_swept, dir_metrics = _load_workdir(path)
    runs += dir_runs
    swept += dir_swept
    metrics += dir_metrics
    if dir_runs:
      known |= set(leaves(dir_runs[0].config))
  if not runs:
    raise UsageError(f"no runs in {', '.join(workdirs)}: no {fmt.RESULTS_FILE} rows and no "
                     f"{fmt.METRICS_FILE} rows.")
  curve_metrics = [k for r in runs for row in r.curve for k in row
                   if k not in (*fmt.ROW_KEYS, fmt.SEED, fmt.DIVERGED)]
  return SweepData(list(workdirs), runs, list(dict.fromkeys(swept)),
                   list(dict.fromkeys(metrics)), list(dict.fromkeys(curve_metrics)),
                   known | set(swept))
