"""Paper-style tables and plots of sweep results: ``python -m gradnoise.report WORKDIR...``.

Reads each work dir's ``results.csv`` (final metrics of finished runs), ``metrics.jsonl``
(curves) and ``config.json`` (the settings of runs not finished yet), groups the runs into
settings (their overrides other than seed and noise) and compares each noise level with no
noise: a summary table, threshold counts, paired tests over shared seeds, curves over
training steps and the distribution of final values; with ``--select_by`` (e.g.
train_error) also each arm's best of k restarts by that metric. A run's noise level is the
field its ``noise.schedule`` uses (``noise.eta`` annealed, ``noise.std`` constant) unless a
field is given. Works on a sweep that is still running.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
import re
import sys
import warnings
from typing import Any, Sequence

from absl import app, flags
from matplotlib.figure import Figure
from matplotlib.patches import Patch
import numpy as np
from scipy import stats

from gradnoise.errors import UsageError

CONFIG_FILE, RESULTS_FILE, METRICS_FILE = "config.json", "results.csv", "metrics.jsonl"
DEFAULT_CURVES = ("train_loss", "test_accuracy")
NOT_METRICS = frozenset({"run", "seed", "diverged", "workdir", "step", "epoch"})
MIN_WILCOXON_PAIRS = 6
# noise.schedule (default annealed) -> the field holding its noise level, as the trainer reads it.
SCHEDULE_FIELD, DEFAULT_SCHEDULE = "noise.schedule", "annealed"
SCHEDULE_NOISE_FIELDS = {"annealed": "noise.eta", "constant": "noise.std"}
_MISSING = object()


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


@dataclasses.dataclass(frozen=True)
class Arm:
  """The runs of one setting with one noise level of one field (0: no noise, field "")."""

  noise: float
  field: str
  label: str
  runs: list[Run]


@dataclasses.dataclass(frozen=True)
class Setting:
  """Runs sharing the values of the grouping fields; arms by increasing noise."""

  label: str
  values: dict[str, Any]
  arms: list[Arm]


@dataclasses.dataclass(frozen=True)
class ArmStats:
  """Final-metric statistics of one arm (over its finished runs).

  ``best``, ``mean``, ``sd`` and ``ci95`` (half-width) use the finite values only and are
  NaN where undefined; ``passed`` counts finite runs meeting each threshold. ``selected``
  is the value of the run that :func:`select_run` picks by the report's ``select_by``
  metric (NaN without one).
  """

  setting: Setting
  arm: Arm
  values: np.ndarray
  runs: int
  diverged: int
  nonfinite: int
  best: float
  mean: float
  sd: float
  ci95: float
  passed: tuple[int, ...]
  selected: float = math.nan


@dataclasses.dataclass(frozen=True)
class PairStats:
  """A noise arm against the no-noise arm of its setting, runs paired by seed.

  ``dropped`` pairs had a non-finite value; the statistics use the other ``pairs``.
  """

  setting: Setting
  arm: Arm
  pairs: int
  dropped: int
  mean_diff: float
  p_ttest: float
  p_wilcoxon: float


@dataclasses.dataclass(frozen=True)
class Report:
  """Everything the tables and plots show; ``noise_field`` describes the noise fields;
  ``select_by`` the metric that picks each arm's ``selected`` run (None: none)."""

  workdirs: list[str]
  metric: str
  higher_is_better: bool
  noise_field: str
  group_by: list[str]
  thresholds: list[float]
  settings: list[Setting]
  arms: list[ArmStats]
  pairs: list[PairStats]
  unfinished: int
  select_by: str | None = None


def _warn(message: str) -> None:
  print(f"warning: {message}", file=sys.stderr)


def _lookup(config: Any, dotted: str) -> Any:
  node = config
  for part in dotted.split("."):
    if not isinstance(node, dict) or part not in node:
      return _MISSING
    node = node[part]
  return node


def _leaves(config: dict[str, Any], prefix: str = "") -> list[str]:
  names = []
  for key, value in config.items():
    if isinstance(value, dict):
      names += _leaves(value, f"{prefix}{key}.")
    else:
      names.append(prefix + key)
  return names


def _parse_cell(text: str) -> Any:
  """A results.csv cell as JSON-like value: bool, number, list, or the string itself."""
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


def _float(value: Any) -> float:
  try:
    return float(value)
  except (TypeError, ValueError):
    return math.nan


def _hashable(value: Any) -> Any:
  if isinstance(value, list):
    return tuple(_hashable(v) for v in value)
  if isinstance(value, dict):
    return tuple(sorted((k, _hashable(v)) for k, v in value.items()))
  return value


def _fmt_value(value: Any) -> str:
  if isinstance(value, bool):
    return "true" if value else "false"
  if isinstance(value, float):
    return f"{value:g}"
  return "none" if value is None else str(value)


def _read_results(path: str) -> tuple[list[str], list[dict[str, str]]]:
  """results.csv: its header and its well-formed rows."""
  with open(path, newline="") as f:
    rows = list(csv.reader(f))
  if not rows:
    return [], []
  header, out = rows[0], []
  if "run" not in header:
    raise UsageError(f"{path} has no 'run' column; columns: {', '.join(header)}.")
  for i, row in enumerate(rows[1:], start=2):
    if len(row) != len(header) or not row[header.index("run")].isdigit():
      _warn(f"{path} line {i} is malformed; skipped.")
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
        _warn(f"{path} line {i + 1} is not JSON; skipped.")
      continue
    if isinstance(row, dict) and isinstance(row.get("run"), int) and "step" in row:
      rows.append(row)
    else:
      _warn(f"{path} line {i + 1} has no integer 'run' and 'step'; skipped.")
  return rows


def _load_workdir(path: str) -> tuple[list[Run], list[str], list[str]]:
  """The runs of one work dir, its swept fields and its results metric columns."""
  record: dict[str, Any] = {}
  config_path = os.path.join(path, CONFIG_FILE)
  if os.path.exists(config_path):
    try:
      with open(config_path) as f:
        record = json.load(f)
    except (OSError, ValueError) as e:
      raise UsageError(f"{config_path} is unreadable ({e}).") from None
  config = record.get("config") or {}
  sweep = record.get("sweep") or []
  swept = [k for o in sweep for k in o if k != "seed"]
  results_path = os.path.join(path, RESULTS_FILE)
  metrics_path = os.path.join(path, METRICS_FILE)
  has_results, has_metrics = os.path.exists(results_path), os.path.exists(metrics_path)
  if not has_results and not has_metrics:
    _warn(f"{path} has no {RESULTS_FILE} or {METRICS_FILE}; it contributes nothing.")
    return [], [], []
  if not has_results:
    _warn(f"{path} has no {RESULTS_FILE} yet; its runs appear in the curves only.")
  header, rows = _read_results(results_path) if has_results else ([], [])
  end = header.index("seed") if "seed" in header else len(header)
  csv_swept = header[header.index("run") + 1:end] if header else []
  swept = list(dict.fromkeys(swept + csv_swept))
  metric_names = [c for c in header if c not in NOT_METRICS and c not in csv_swept]

  def sweep_entry(run_id: int) -> dict[str, Any] | None:
    if not record:
      return None
    if not sweep:
      return {} if run_id == 0 else None
    return dict(sweep[run_id]) if run_id < len(sweep) else None

  runs: dict[int, Run] = {}
  for row in rows:
    run_id = int(row["run"])
    overrides = sweep_entry(run_id) or {}
    overrides.update({f: _parse_cell(row[f]) for f in csv_swept if row[f] != ""})
    seed = _parse_cell(row["seed"]) if row.get("seed") else overrides.get("seed",
                                                                           config.get("seed"))
    overrides.pop("seed", None)
    runs[run_id] = Run(path, run_id, overrides, config, seed,
                       final={m: _float(_parse_cell(row[m])) for m in metric_names},
                       diverged=_parse_cell(row.get("diverged", "")) is True)
  unplaced = set()
  for row in _read_metrics(metrics_path) if has_metrics else []:
    run_id = row["run"]
    if run_id not in runs:
      overrides = sweep_entry(run_id)
      if overrides is None:
        unplaced.add(run_id)
        continue
      seed = overrides.pop("seed", config.get("seed"))
      runs[run_id] = Run(path, run_id, overrides, config, seed)
    runs[run_id].curve.append(row)
  if unplaced:
    _warn(f"{len(unplaced)} runs in {metrics_path} are neither in {RESULTS_FILE} nor in the "
          f"sweep of {CONFIG_FILE}; skipped.")
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
      known |= set(_leaves(dir_runs[0].config))
  if not runs:
    raise UsageError(f"no runs in {', '.join(workdirs)}: no {RESULTS_FILE} rows and no "
                     f"{METRICS_FILE} rows.")
  curve_metrics = [k for r in runs for row in r.curve for k in row if k not in NOT_METRICS]
  swept = list(dict.fromkeys(swept))
  return SweepData(list(workdirs), runs, swept, list(dict.fromkeys(metrics)),
                   list(dict.fromkeys(curve_metrics)), known | set(swept))


def parse_list(text: str) -> list[str]:
  """``"a, b,c"`` -> ``["a", "b", "c"]``."""
  return [s.strip() for s in text.split(",") if s.strip()]


def parse_thresholds(text: str) -> list[float]:
  """A comma list of numbers (``"0.01,0.05"``); UsageError on anything else."""
  out = []
  for item in parse_list(text):
    try:
      value = float(item)
    except ValueError:
      value = math.nan
    if not math.isfinite(value):
      raise UsageError(f"--thresholds: {item!r} is not a finite number; accepted: a comma "
                       "list of numbers such as 0.01,0.02,0.05.")
    out.append(value)
  return out


def _check_field(data: SweepData, field: str, flag: str) -> None:
  if field not in data.known_fields:
    raise UsageError(f"{flag}: unknown field {field!r}; known fields: "
                     f"{', '.join(sorted(data.known_fields))}.")


def _schedule(run: Run) -> str:
  schedule = run.get(SCHEDULE_FIELD) or DEFAULT_SCHEDULE
  if schedule not in SCHEDULE_NOISE_FIELDS:
    raise UsageError(f"run {run.run} of {run.workdir} has {SCHEDULE_FIELD}={schedule!r}, "
                     f"whose noise field is unknown (known schedules: "
                     f"{', '.join(SCHEDULE_NOISE_FIELDS)}); give it with --noise_field.")
  return schedule


def _noise_fields(noise_field: str | None) -> tuple[str, ...]:
  """The fields that make the noise arms, never settings: ``noise_field``, else the
  schedule and every schedule's field."""
  if noise_field:
    return (noise_field,)
  return (SCHEDULE_FIELD, *SCHEDULE_NOISE_FIELDS.values())


def _noise(run: Run, noise_field: str | None) -> tuple[float, str]:
  """The run's noise level and its field (``noise_field``, else its schedule's); 0, ""."""
  field = noise_field or SCHEDULE_NOISE_FIELDS[_schedule(run)]
  value = run.get(field)
  try:
    noise = 0.0 if value is None else float(value)
  except (TypeError, ValueError):
    raise UsageError(f"noise field {field}: run {run.run} of {run.workdir} has the "
                     f"non-numeric value {value!r}.") from None
  return (noise, field) if noise else (0.0, "")


def _arm_order(noise: tuple[float, str]) -> tuple[bool, str, float]:
  return noise[0] != 0, noise[1], noise[0]


def group_runs(data: SweepData, group_by: Sequence[str] | None = None,
               noise_field: str | None = None) -> tuple[list[str], list[Setting]]:
  """Settings (first-seen order) of every run, and the fields they are grouped on.

  ``noise_field`` None: each run's noise level is the field of its ``noise.schedule``.
  ``group_by`` defaults to every swept field; seed and the noise fields never group. Arms
  are labelled "no noise" and "noise", or "noise (<field> <level>)" where levels differ.
  """
  if noise_field and any(r.config for r in data.runs):  # else only swept fields are known
    _check_field(data, noise_field, "--noise_field")
  if group_by is None:
    group_by = data.swept
  for field in group_by:
    _check_field(data, field, "--group_by")
  skip = {"seed", *_noise_fields(noise_field)}
  fields = [f for f in dict.fromkeys(group_by) if f not in skip]
  by_key: dict[tuple[Any, ...], tuple[dict[str, Any], dict[tuple[float, str], list[Run]]]] = {}
  for run in data.runs:
    values = {f: run.get(f) for f in fields}
    key = tuple(_hashable(v) for v in values.values())
    by_key.setdefault(key, (values, {}))[1].setdefault(_noise(run, noise_field), []).append(run)
  levels = {n for _, arms in by_key.values() for n in arms if n[0]}

  def label(noise: float, field: str) -> str:
    if not noise:
      return "no noise"
    return "noise" if len(levels) == 1 else f"noise ({field.rsplit('.', 1)[-1]} {noise:g})"

  settings = []
  for values, arms in by_key.values():
    setting = ", ".join(f"{f}={_fmt_value(v)}" for f, v in values.items()) or "all runs"
    settings.append(Setting(setting, values, [Arm(*n, label(*n), arms[n])
                                              for n in sorted(arms, key=_arm_order)]))
  return fields, settings


def _finished(arm: Arm, metric: str) -> list[Run]:
  return [r for r in arm.runs if r.final is not None and metric in r.final]


def lower_is_better(metric: str) -> bool:
  """Whether smaller values of ``metric`` are better: its name contains error or loss."""
  return any(w in metric.lower() for w in ("error", "loss"))


def select_run(runs: Sequence[Run], by: str) -> Run | None:
  """The finished run with the best finite final ``by`` (lowest for errors and losses,
  :func:`lower_is_better`; the first on ties), or None.

  by="train_error" is the best of k restarts as the MemN2N paper selects (Sukhbaatar et
  al. 2015; their README: "we repeat training 10 times and picked the one with lowest
  training error").
  """
  scored = [(r.final[by], i) for i, r in enumerate(runs)
            if r.final is not None and math.isfinite(r.final.get(by, math.nan))]
  if not scored:
    return None
  sign = 1 if lower_is_better(by) else -1
  return runs[min(scored, key=lambda x: (sign * x[0], x[1]))[1]]


def _arm_stats(setting: Setting, arm: Arm, metric: str, higher_is_better: bool,
               thresholds: Sequence[float], select_by: str | None = None) -> ArmStats:
  done = _finished(arm, metric)
  chosen = select_run(done, select_by) if select_by else None
  values = np.array([r.final[metric] for r in done], dtype=float)
  ok = np.isfinite(values)
  finite = values[ok]
  n = finite.size
  sd = float(np.std(finite, ddof=1)) if n > 1 else math.nan
  passed = tuple(int(np.sum(ok & (values >= t if higher_is_better else values < t)))
                 for t in thresholds)
  return ArmStats(
      setting, arm, values, runs=len(done), diverged=sum(r.diverged for r in done),
      nonfinite=int(np.sum(~ok)),
      best=float(finite.max() if higher_is_better else finite.min()) if n else math.nan,
      mean=float(finite.mean()) if n else math.nan, sd=sd,
      ci95=float(stats.t.ppf(0.975, n - 1) * sd / math.sqrt(n)) if n > 1 else math.nan,
      passed=passed, selected=chosen.final[metric] if chosen else math.nan)


def _pair_stats(setting: Setting, arm: Arm, base: Arm, metric: str,
                pair_fields: Sequence[str]) -> PairStats:
  def by_key(runs: list[Run]) -> dict[tuple[Any, ...], list[Run]]:
    out: dict[tuple[Any, ...], list[Run]] = {}
    for r in runs:
      key = (_hashable(r.seed),) + tuple(_hashable(r.get(f)) for f in pair_fields)
      out.setdefault(key, []).append(r)
    return out

  base_runs = by_key(_finished(base, metric))
  pairs = [(r.final[metric], b.final[metric])
           for key, runs in by_key(_finished(arm, metric)).items()
           for r, b in zip(runs, base_runs.get(key, []))]
  x, y = np.array(pairs, dtype=float).reshape(-1, 2).T
  ok = np.isfinite(x) & np.isfinite(y)
  x, y = x[ok], y[ok]
  diff = x - y
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # constant differences: scipy warns and returns NaN
    p_ttest = float(stats.ttest_rel(x, y).pvalue) if x.size > 1 else math.nan
    p_wilcoxon = (float(stats.wilcoxon(diff).pvalue)
                  if np.count_nonzero(diff) >= MIN_WILCOXON_PAIRS else math.nan)
  return PairStats(setting, arm, pairs=int(x.size), dropped=int(np.sum(~ok)),
                   mean_diff=float(diff.mean()) if x.size else math.nan,
                   p_ttest=p_ttest, p_wilcoxon=p_wilcoxon)


def analyze(data: SweepData, metric: str = "test_accuracy", *,
            group_by: Sequence[str] | None = None, noise_field: str | None = None,
            higher_is_better: bool | None = None,
            thresholds: Sequence[float] = (), select_by: str | None = None) -> Report:
  """Groups the runs and computes the table statistics of ``metric``.

  ``noise_field`` None: from each run's ``noise.schedule`` (see :func:`group_runs`).
  ``higher_is_better`` None: False if the metric name contains "error" or "loss".
  ``select_by``: a results.csv metric (e.g. train_error) that picks each arm's run, whose
  ``metric`` is reported as ``selected`` (best of k, :func:`select_run`).
  """
  for name, flag in ((metric, "--metric"), (select_by, "--select_by")):
    if name and data.metrics and name not in data.metrics:
      raise UsageError(f"{flag} {name!r} is not a {RESULTS_FILE} column; available: "
                       f"{', '.join(data.metrics)}.")
  if higher_is_better is None:
    higher_is_better = not lower_is_better(metric)
  fields, settings = group_runs(data, group_by, noise_field)
  lacking = sum(r.final is not None and metric not in r.final for r in data.runs)
  if lacking:
    _warn(f"{lacking} finished runs have no {metric!r} column; left out of the tables.")
  skip = set(fields) | set(_noise_fields(noise_field))
  pair_fields = [f for f in data.swept if f not in skip]
  arms, pairs = [], []
  for setting in settings:
    arms += [_arm_stats(setting, a, metric, higher_is_better, thresholds, select_by)
             for a in setting.arms]
    base = setting.arms[0]
    if base.noise == 0:
      pairs += [_pair_stats(setting, a, base, metric, pair_fields) for a in setting.arms[1:]]
  noise_source = noise_field or ", ".join(
      f"{SCHEDULE_NOISE_FIELDS[s]} ({SCHEDULE_FIELD}={s})"
      for s in sorted({_schedule(r) for r in data.runs}))
  return Report(list(data.workdirs), metric, higher_is_better, noise_source, fields,
                list(thresholds), settings, [a for a in arms if a.runs],
                [p for p in pairs if p.pairs or p.dropped],
                unfinished=sum(r.final is None for r in data.runs), select_by=select_by)


def _num(value: float, spec: str = ".4g") -> str:
  return format(value, spec) if math.isfinite(value) else ""


def _md_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
  cell = lambda s: str(s).replace("|", "\\|")
  lines = ["| " + " | ".join(cell(h) for h in header) + " |",
           "|" + "|".join("---" for _ in header) + "|"]
  return lines + ["| " + " | ".join(cell(c) for c in row) + " |" for row in rows]


def _threshold_label(report: Report, t: float) -> str:
  return f"{'>=' if report.higher_is_better else '<'} {t:g}"


def arm_labels(report: Report) -> list[str]:
  """The arms' labels in report order: "no noise" first, then by noise level."""
  arms = {(a.noise, a.field): a.label for s in report.settings for a in s.arms}
  return [arms[n] for n in sorted(arms, key=_arm_order)]


def to_markdown(report: Report, figures: Sequence[str] = ()) -> str:
  """The report as Markdown: summary, threshold and paired tables, then the figures."""
  m = report.metric
  direction = "higher" if report.higher_is_better else "lower"
  lines = [f"# Gradient noise: {m}", "",
           f"Work dirs: {', '.join(report.workdirs)}. Settings grouped by: "
           f"{', '.join(report.group_by) or 'nothing (all runs)'}. Noise level: "
           f"{report.noise_field}; 0 or unset: no noise. {m}: {direction} is better."]
  if report.unfinished:
    lines.append(f"{report.unfinished} runs are not finished yet: they appear in the curves "
                 "only.")
  if not report.arms:
    lines += ["", "No finished runs yet: no tables."]
  else:
    selected = [f"selected by {report.select_by}"] if report.select_by else []
    lines += ["", f"## Final {m}", ""]
    lines += _md_table(
        ["setting", "noise", "runs", "diverged", "non-finite", "best", "mean", "sd",
         "95% CI ±"] + selected,
        [[a.setting.label, a.arm.label, a.runs, a.diverged, a.nonfinite, _num(a.best),
          _num(a.mean), _num(a.sd), _num(a.ci95)] + ([_num(a.selected)] if selected else [])
         for a in report.arms])
    lines += ["", "runs: finished runs. Diverged runs keep their final value. Non-finite "
              "values (NaN, inf) are left out of best, mean, sd and CI (n = finite runs) and "
              "count as failures in threshold counts. sd: ddof=1; 95% CI: half-width "
              "t(0.975, n-1)·sd/√n, blank for n = 1."
              + (f" selected: {m} of the run with the best final {report.select_by} (best "
                 "of k restarts)." if selected else "")]
  if report.arms and report.thresholds:
    labels = arm_labels(report)
    lines += ["", f"## Runs with {m} {'>=' if report.higher_is_better else '<'} threshold",
              ""]
    rows = []
    for setting in report.settings:
      cells = {a.arm.label: a for a in report.arms if a.setting is setting}
      if not cells:
        continue
      for i, t in enumerate(report.thresholds):
        rows.append([setting.label, f"{m} {_threshold_label(report, t)}"] +
                    [f"{cells[a].passed[i]}/{cells[a].runs}" if a in cells else ""
                     for a in labels])
    lines += _md_table(["setting", "threshold"] + labels, rows)
    lines += ["", "Cells: runs meeting the threshold / finished runs; non-finite values "
              "never do."]
  if report.pairs:
    lines += ["", "## Paired by seed: noise minus no noise", ""]
    lines += _md_table(
        ["setting", "noise", "pairs", "mean diff", "t-test p", "Wilcoxon p"],
        [[p.setting.label, p.arm.label, p.pairs, _num(p.mean_diff), _num(p.p_ttest, ".3g"),
          _num(p.p_wilcoxon, ".3g")] for p in report.pairs])
    dropped = sum(p.dropped for p in report.pairs)
    lines += ["", "Pairs: runs of one setting with the same seed (and the same values of "
              "the other swept fields). Two-sided paired t-test (scipy.stats.ttest_rel); "
              f"Wilcoxon signed-rank only with >= {MIN_WILCOXON_PAIRS} nonzero differences."
              + (f" {dropped} pairs with a non-finite value left out." if dropped else "")]
  if figures:
    lines += ["", "## Figures", ""] + [f"![{f}]({f})" for f in figures]
  return "\n".join(lines) + "\n"


def write_summary_csv(report: Report, path: str) -> None:
  """summary.csv: one row per setting and noise arm; paired columns on the noise arms;
  ``selected`` blank without ``select_by``."""
  pairs = {id(p.arm): p for p in report.pairs}
  op = "ge" if report.higher_is_better else "lt"
  header = (["setting"] + report.group_by + ["noise_field", "noise", "runs", "diverged",
            "nonfinite", "best", "mean", "sd", "ci95"]
            + [f"runs_{op}_{t:g}" for t in report.thresholds]
            + ["pairs", "mean_diff", "p_ttest", "p_wilcoxon", "selected"])
  num = lambda x: repr(x) if math.isfinite(x) else ""
  with open(path, "w", newline="") as f:
    writer = csv.writer(f, lineterminator="\n")
    writer.writerow(header)
    for a in report.arms:
      p = pairs.get(id(a.arm))
      writer.writerow(
          [a.setting.label] + [_fmt_value(a.setting.values[g]) for g in report.group_by]
          + [a.arm.field, repr(a.arm.noise), a.runs, a.diverged, a.nonfinite]
          + [num(x) for x in (a.best, a.mean, a.sd, a.ci95)] + list(a.passed)
          + ([p.pairs, num(p.mean_diff), num(p.p_ttest), num(p.p_wilcoxon)] if p
             else ["", "", "", ""]) + [num(a.selected)])


def _slug(text: str) -> str:
  return re.sub(r"[^A-Za-z0-9.+-]+", "_", text.replace("=", "-")).strip("_.")[:80] or "all"


def _curve(runs: Sequence[Run], name: str
           ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int]:
  """Steps; mean, min and max over runs of a metrics.jsonl metric there; number of runs."""
  per_run = []
  for run in runs:
    points = {row["step"]: _float(row[name]) for row in run.curve if name in row}
    if points:
      per_run.append(points)
  steps = np.array(sorted({s for p in per_run for s in p}), dtype=float)
  table = np.array([[p.get(s, math.nan) for s in steps] for p in per_run]).reshape(
      len(per_run), steps.size)
  table[~np.isfinite(table)] = np.nan
  keep = ~np.all(np.isnan(table), axis=0)
  table = table[:, keep]
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # an empty table gives empty curves
    return (steps[keep], np.nanmean(table, 0), np.nanmin(table, 0), np.nanmax(table, 0),
            len(per_run))


def plot_curves(report: Report, out: str, curves: Sequence[str]) -> list[str]:
  """One PNG per setting: each metric over steps, mean and min-max band per noise arm."""
  colors = {label: f"C{i}" for i, label in enumerate(arm_labels(report))}
  files = []
  for i, setting in enumerate(report.settings):
    if not curves or not any(r.curve for a in setting.arms for r in a.runs):
      continue
    cols = min(len(curves), 2)
    rows = math.ceil(len(curves) / cols)
    fig = Figure(figsize=(8, 3.5 * rows), dpi=100)
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax, name in zip(axes, curves):
      lows = []
      for arm in setting.arms:
        steps, mean, lo, hi, n = _curve(arm.runs, name)
        if steps.size:
          ax.plot(steps, mean, color=colors[arm.label], lw=1.2, label=f"{arm.label} (n={n})")
          ax.fill_between(steps, lo, hi, color=colors[arm.label], alpha=0.2, lw=0)
          lows.append(lo.min())
      if "loss" in name and lows and min(lows) > 0:
        ax.set_yscale("log")
      ax.set_xlabel("step")
      ax.set_ylabel(name)
      ax.grid(alpha=0.3)
      if lows:
        ax.legend(fontsize=7, title="mean; band: min–max over runs", title_fontsize=7)
    for ax in axes[len(curves):]:
      ax.set_visible(False)
    fig.suptitle(setting.label, fontsize=9)
    fig.tight_layout()
    name = f"curves_{i:02d}_{_slug(setting.label)}.png"
    fig.savefig(os.path.join(out, name))
    files.append(name)
  return files


def plot_final(report: Report, out: str) -> str | None:
  """One PNG: the final metric of every finished run, box and points per setting and arm."""
  if not report.arms:
    return None
  labels = arm_labels(report)
  colors = {label: f"C{i}" for i, label in enumerate(labels)}
  settings = [s for s in report.settings if any(a.setting is s for a in report.arms)]
  width = 0.8 / len(labels)
  fig = Figure(figsize=(min(max(8, 1.2 * len(settings) * len(labels)), 24), 3.5), dpi=100)
  ax = fig.subplots()
  rng = np.random.default_rng(0)
  for i, setting in enumerate(settings):
    for a in (a for a in report.arms if a.setting is setting):
      x = i + (labels.index(a.arm.label) - (len(labels) - 1) / 2) * width
      values = a.values[np.isfinite(a.values)]
      if values.size:
        ax.boxplot([values], positions=[x], widths=0.8 * width, manage_ticks=False,
                   showfliers=False, patch_artist=True, medianprops={"color": "black"},
                   boxprops={"facecolor": colors[a.arm.label], "alpha": 0.35})
        ax.scatter(x + rng.uniform(-0.25, 0.25, values.size) * width, values, s=8,
                   color=colors[a.arm.label], zorder=3)
  failed = {id(s): sum(a.nonfinite for a in report.arms if a.setting is s) for s in settings}
  ax.set_xticks(range(len(settings)),
                [s.label.replace(", ", "\n") + (f"\n({failed[id(s)]} non-finite, not shown)"
                                                if failed[id(s)] else "") for s in settings],
                fontsize=7)
  ax.set_ylabel(f"final {report.metric}")
  ax.grid(axis="y", alpha=0.3)
  ax.legend(handles=[Patch(color=colors[a], alpha=0.5, label=a) for a in labels], fontsize=7,
            title="box: quartiles; points: runs (finite)", title_fontsize=7)
  fig.tight_layout()
  name = f"final_{_slug(report.metric)}.png"
  fig.savefig(os.path.join(out, name))
  return name


def make_report(workdirs: Sequence[str], out: str | None = None,
                metric: str = "test_accuracy", *, group_by: Sequence[str] | None = None,
                noise_field: str | None = None, higher_is_better: bool | None = None,
                thresholds: Sequence[float] = (), curves: Sequence[str] | None = None,
                plots: bool = True, select_by: str | None = None) -> str:
  """Writes report.md, summary.csv and the PNGs to ``out``; returns the Markdown.

  ``out`` defaults to ``<first work dir>/report``. ``curves`` None: those of
  ``DEFAULT_CURVES`` that metrics.jsonl has; a name it lacks is a UsageError otherwise.
  """
  data = load_runs(workdirs)
  report = analyze(data, metric, group_by=group_by, noise_field=noise_field,
                   higher_is_better=higher_is_better, thresholds=thresholds,
                   select_by=select_by)
  if curves is None:
    curves = [c for c in DEFAULT_CURVES if c in data.curve_metrics]
  elif data.curve_metrics:
    unknown = [c for c in curves if c not in data.curve_metrics]
    if unknown:
      raise UsageError(f"--curves: {', '.join(unknown)} not in {METRICS_FILE}; available: "
                       f"{', '.join(data.curve_metrics)}.")
  out = out or os.path.join(workdirs[0], "report")
  os.makedirs(out, exist_ok=True)
  figures = []
  if plots:
    figures = plot_curves(report, out, curves)
    final = plot_final(report, out)
    figures += [final] if final else []
  text = to_markdown(report, figures)
  with open(os.path.join(out, "report.md"), "w") as f:
    f.write(text)
  write_summary_csv(report, os.path.join(out, "summary.csv"))
  return text


FLAGS = flags.FLAGS
flags.DEFINE_string("out", None, "Output dir for report.md, summary.csv and PNGs; default: "
                    "<first WORKDIR>/report.")
flags.DEFINE_string("metric", "test_accuracy", "results.csv column to tabulate.")
flags.DEFINE_boolean("higher_is_better", True, "Whether larger metric values are better; "
                     "unset: false if the metric name contains 'error' or 'loss'.")
flags.DEFINE_string("group_by", "", "Comma list of dotted fields that define a setting; "
                    "default: every swept field except seed and the noise fields.")
flags.DEFINE_string("noise_field", "", "Field giving the noise level (0 or unset: no noise); "
                    "default: each run's noise.schedule decides (noise.eta for annealed, "
                    "noise.std for constant).")
flags.DEFINE_string("thresholds", "", "Comma list, e.g. 0.01,0.05: count runs with metric "
                    "< threshold (lower is better) or >= threshold (higher is better).")
flags.DEFINE_string("curves", ",".join(DEFAULT_CURVES), "Comma list of metrics.jsonl "
                    "metrics to plot over steps.")
flags.DEFINE_boolean("plots", True, "Write the PNG figures.")
flags.DEFINE_string("select_by", "", "results.csv column, e.g. train_error: also report "
                    "the metric of each arm's run with the best final value of it (best of "
                    "k restarts, as the MemN2N paper by training error).")


def main(argv: Sequence[str]) -> int:
  """Command line: prints the Markdown report; exit code 2 on bad input."""
  try:
    text = make_report(
        argv[1:], FLAGS.out, FLAGS.metric,
        group_by=parse_list(FLAGS.group_by) or None, noise_field=FLAGS.noise_field or None,
        higher_is_better=(FLAGS.higher_is_better if FLAGS["higher_is_better"].present
                          else None),
        thresholds=parse_thresholds(FLAGS.thresholds),
        curves=parse_list(FLAGS.curves) if FLAGS["curves"].present else None,
        plots=FLAGS.plots, select_by=FLAGS.select_by or None)
  except UsageError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  print(text, end="")
  return 0


if __name__ == "__main__":
  app.run(main)
