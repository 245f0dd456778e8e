"""Progress of a compile group: a tqdm bar on a terminal, periodic log lines otherwise."""

from __future__ import annotations

import math
import sys
import time
from typing import TextIO

from tqdm import tqdm


class GroupProgress:
  """Counts run-steps of one compile group and shows rates, ETA and the latest metric.

  Args:
    name: label, e.g. "group 0".
    total_run_steps: runs x epochs x steps per epoch.
    runs_at_once: runs trained together (steps/s = run-steps/s / runs_at_once).
    stream: where to write; a tqdm bar if it is a terminal, else plain lines at most
      every ``interval`` seconds (and at the end).
  """

  def __init__(self, name: str, total_run_steps: int, runs_at_once: int,
               stream: TextIO | None = None, interval: float = 30.0):
    self.name, self.total, self.runs_at_once = name, total_run_steps, runs_at_once
    self.stream = stream or sys.stdout
    self.interval = interval
    self.done = 0
    self.start = time.monotonic()
    self.last_line = -math.inf
    self.metric = ""
    self.bar = None
    if self.stream.isatty():
      self.bar = tqdm(total=total_run_steps, desc=name, unit="run-step", unit_scale=True,
                      file=self.stream, dynamic_ncols=True)

  def advance(self, run_steps: int, metrics: dict[str, float] | None = None) -> None:
    self.done += run_steps
    if metrics:
      self.metric = " ".join(f"{k}={v:.4g}" for k, v in metrics.items())
    if self.bar is not None:
      self.bar.set_postfix_str(f"{self._steps_per_s():.1f} steps/s {self.metric}".strip(),
                               refresh=False)
      self.bar.update(run_steps)
    elif time.monotonic() - self.last_line >= self.interval or self.done >= self.total:
      self._line()

  def close(self) -> None:
    if self.bar is not None:
      self.bar.close()

  def _steps_per_s(self) -> float:
    return self._run_steps_per_s() / max(self.runs_at_once, 1)

  def _run_steps_per_s(self) -> float:
    return self.done / max(time.monotonic() - self.start, 1e-9)

  def _line(self) -> None:
    self.last_line = time.monotonic()
    rate = self._run_steps_per_s()
    eta = (self.total - self.done) / rate if rate > 0 else math.inf
    percent = 100.0 * self.done / max(self.total, 1)
    print(f"{self.name}: {self.done}/{self.total} run-steps ({percent:.0f}%), "
          f"{self._steps_per_s():.1f} steps/s, {rate:.1f} run-steps/s, "
          f"ETA {_duration(eta)}{'  ' + self.metric if self.metric else ''}",
          file=self.stream, flush=True)


def _duration(seconds: float) -> str:
  if not math.isfinite(seconds):
    return "?"
  minutes, s = divmod(int(round(seconds)), 60)
  hours, m = divmod(minutes, 60)
  return f"{hours}:{m:02d}:{s:02d}" if hours else f"{m}:{s:02d}"
