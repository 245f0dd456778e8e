"""Statistics of the final metric: per arm (best, mean, sd, 95% CI, threshold counts, best
of k), and each noise arm paired with its setting's no-noise arm (t-test, Wilcoxon)."""

from __future__ import annotations

import dataclasses
import math
import warnings
from typing import Any, Sequence

import numpy as np
from scipy import stats

from gradnoise import results_format as fmt
from gradnoise.errors import UsageError
from gradnoise.report import group
from gradnoise.report.defaults import experiment_defaults
from gradnoise.report.group import Arm, Setting
from gradnoise.report.load import Run, SweepData, warn

MIN_WILCOXON_PAIRS = 6


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
  """A noise arm against the no-noise arm of its setting, runs paired by
  :func:`gradnoise.report.group.pair_key` (the seed and every non-noise field).

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


def _pair(runs: Sequence[Run], base: Sequence[Run],
          pair_fields: Sequence[str]) -> list[tuple[Run, Run]]:
  """Each run with an unused base run of the same :func:`gradnoise.report.group.pair_key`,
  one of its own work dir where there is one (its sweep's baseline), else the first."""
  free: dict[tuple[Any, ...], list[Run]] = {}
  for b in base:
    free.setdefault(group.pair_key(b, pair_fields), []).append(b)
  pairs = []
  for r in runs:
    candidates = free.get(group.pair_key(r, pair_fields))
    if candidates:
      b = next((c for c in candidates if c.workdir == r.workdir), candidates[0])
      candidates.remove(b)
      pairs.append((r, b))
  return pairs


def _pair_stats(setting: Setting, arm: Arm, base: Arm, metric: str,
                pair_fields: Sequence[str]) -> PairStats:
  pairs = [(r.final[metric], b.final[metric])
           for r, b in _pair(_finished(arm, metric), _finished(base, metric), pair_fields)]
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


def analyze(data: SweepData, metric: str | None = None, *, group_by: Sequence[str] | None = None,
            noise_field: str | None = None, higher_is_better: bool | None = None,
            thresholds: Sequence[float] = (), select_by: str | None = None) -> Report:
  """Groups the runs and computes the table statistics of ``metric``.

  ``metric`` None: the experiment's summary metric
  (:func:`gradnoise.report.defaults.experiment_defaults`). ``noise_field`` None: from each run's ``noise.schedule`` (see
  :func:`gradnoise.report.group.group_runs`). ``higher_is_better`` None: False if the
  metric name contains "error" or "loss". ``select_by``: a results.csv metric (e.g.
  train_error) that picks each arm's run, whose ``metric`` is reported as ``selected``
  (best of k, :func:`select_run`). A noise run is paired with the no-noise run of its
  setting that differs from it in noise fields only (seed included).
  """
  metric = metric or experiment_defaults(data).metric
  for name, flag in ((metric, "--metric"), (select_by, "--select_by")):
    if name and data.metrics and name not in data.metrics:
      raise UsageError(f"{flag} {name!r} is not a {fmt.RESULTS_FILE} column; available: "
                       f"{', '.join(data.metrics)}.")
  if higher_is_better is None:
    higher_is_better = not lower_is_better(metric)
  fields, settings = group.group_runs(data, group_by, noise_field)
  lacking = sum(r.final is not None and metric not in r.final for r in data.runs)
  if lacking:
    warn(f"{lacking} finished runs have no {metric!r} column; left out of the tables.")
  arm_fields = group.noise_fields(noise_field)
  pair_fields = [f for f in group.setting_fields(data) if f not in arm_fields]
  arms, pairs = [], []
  for setting in settings:
    arms += [_arm_stats(setting, a, metric, higher_is_better, thresholds, select_by)
             for a in setting.arms]
    base = setting.arms[0]
    if base.noise == 0:
      pairs += [_pair_stats(setting, a, base, metric, pair_fields) for a in setting.arms[1:]]
  noise_source = noise_field or ", ".join(
      f"{field} ({source})" for field, source in sorted({group.level_source(r)
                                                          for r in data.runs}))
  return Report(list(data.workdirs), metric, higher_is_better, noise_source, fields,
                list(thresholds), settings, [a for a in arms if a.runs],
                [p for p in pairs if p.pairs or p.dropped],
                unfinished=sum(r.final is None for r in data.runs), select_by=select_by)
