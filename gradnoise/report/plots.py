"""The report's PNG figures (matplotlib, imported only by this module): metrics.jsonl curves
and noise diagnostics per setting, and the final metric of every run."""

from __future__ import annotations

import math
import os
import re
import warnings
from typing import Sequence

from matplotlib.figure import Figure
from matplotlib.patches import Patch
import numpy as np

from gradnoise.report.group import Arm
from gradnoise.report.load import Run, to_float
from gradnoise.report.render import arm_labels
from gradnoise.report.stats import Report

# The trainer's per-epoch noise diagnostics (the mean over the epoch's steps; <name>_max,
# where logged, their max), one panel each, with the y-axis label.
DIAGNOSTICS = (("train_noise_to_grad", "noise norm / gradient norm"),
               ("train_clipped_fraction", "fraction of steps clipped"),
               ("train_grad_norm", "gradient norm before clipping"),
               ("train_clipped_grad_norm", "gradient norm after clipping"),
               ("train_noise_norm", "injected noise norm"))
_BAND = "mean; band: min–max over runs"


def _slug(text: str) -> str:
  return re.sub(r"[^A-Za-z0-9.+-]+", "_", text.replace("=", "-")).strip("_.")[:80] or "all"


def _curve(runs: Sequence[Run], name: str, x: str = "step"
           ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int]:
  """Values of ``x`` (a metrics.jsonl key: step or epoch); mean, min and max over runs of a
  metrics.jsonl metric there; number of runs."""
  per_run = []
  for run in runs:
    points = {row[x]: to_float(row[name]) for row in run.curve if name in row}
    if points:
      per_run.append(points)
  if not per_run:
    empty = np.zeros(0)
    return empty, empty, empty, empty, 0
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


def _colors(report: Report) -> dict[str, str]:
  return {label: f"C{i}" for i, label in enumerate(arm_labels(report))}


def _panel(ax, arms: Sequence[Arm], colors: dict[str, str], name: str, x: str,
           ylabel: str) -> None:
  """One metric over ``x``: per arm its mean over runs with the min-max band, and the mean
  of ``<name>_max`` dashed where logged; log scale for positive losses and norms."""
  lows, dashed = [], False
  for arm in arms:
    steps, mean, lo, hi, n = _curve(arm.runs, name, x)
    if steps.size:
      ax.plot(steps, mean, color=colors[arm.label], lw=1.2, label=f"{arm.label} (n={n})")
      ax.fill_between(steps, lo, hi, color=colors[arm.label], alpha=0.2, lw=0)
      lows.append(lo.min())
    steps, peak, lo, _, _ = _curve(arm.runs, f"{name}_max", x)
    if steps.size:
      ax.plot(steps, peak, color=colors[arm.label], lw=0.8, ls="--")
      lows.append(lo.min())
      dashed = True
  if ("loss" in name or "norm" in name) and lows and min(lows) > 0:
    ax.set_yscale("log")
  ax.set_xlabel(x)
  ax.set_ylabel(ylabel)
  ax.grid(alpha=0.3)
  if lows:
    ax.legend(fontsize=7, title=_BAND + ("; dashed: max in the epoch" if dashed else ""),
              title_fontsize=7)


def _grid(panels: int) -> tuple[Figure, list]:
  cols = min(panels, 2)
  rows = math.ceil(panels / cols)
  fig = Figure(figsize=(8, 3.5 * rows), dpi=100)
  axes = list(fig.subplots(rows, cols, squeeze=False).ravel())
  for ax in axes[panels:]:
    ax.set_visible(False)
  return fig, axes


def _save(fig: Figure, title: str, out: str, name: str) -> str:
  fig.suptitle(title, fontsize=9)
  fig.tight_layout()
  fig.savefig(os.path.join(out, name))
  return name


def plot_curves(report: Report, out: str, curves: Sequence[str]) -> list[str]:
  """One PNG per setting: each metric over steps, mean and min-max band per noise arm."""
  colors, files = _colors(report), []
  for i, setting in enumerate(report.settings):
    if not curves or not any(r.curve for a in setting.arms for r in a.runs):
      continue
    fig, axes = _grid(len(curves))
    for ax, name in zip(axes, curves):
      _panel(ax, setting.arms, colors, name, "step", name)
    files.append(_save(fig, setting.label, out, f"curves_{i:02d}_{_slug(setting.label)}.png"))
  return files


def plot_diagnostics(report: Report, out: str) -> list[str]:
  """One PNG per setting whose runs logged noise diagnostics (:data:`DIAGNOSTICS`): each
  over epochs, noise arms beside no noise, mean and min-max band over runs (the epoch's
  max dashed). None logged: no PNG."""
  colors, files = _colors(report), []
  for i, setting in enumerate(report.settings):
    logged = {k for a in setting.arms for r in a.runs for row in r.curve for k in row}
    panels = [(n, label) for n, label in DIAGNOSTICS if n in logged or f"{n}_max" in logged]
    if not panels:
      continue
    fig, axes = _grid(len(panels))
    for ax, (name, label) in zip(axes, panels):
      _panel(ax, setting.arms, colors, name, "epoch", label)
    files.append(_save(fig, f"noise diagnostics: {setting.label}", out,
                       f"diagnostics_{i:02d}_{_slug(setting.label)}.png"))
  return files


def plot_final(report: Report, out: str) -> str | None:
  """One PNG: the final metric of every finished run, box and points per setting and arm."""
  if not report.arms:
    return None
  labels = arm_labels(report)
  colors = _colors(report)
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
