r"""The prepared accelerator run: benchmarks, then the paper-scale runs that fit a time budget.

One command on a lent accelerator machine (no network; it receives the checkout only):

    python3 benchmarks/accelerator.py --budget=540          # writes under $OUT

It installs the wheels carried in ``.device/`` (see --prepare), prints the devices, runs
``sweep_throughput.py`` at 1/8/32/128/512 runs, ``noise_overhead.py`` and
``noise_options.py``, then the full protocols in order: ``configs/mnist_mlp.py:table1``
(520 runs), ``configs/memnet_babi.py:table2`` (800 runs), ``configs/nram.py:table5`` (600
runs) where it exists, then
``configs/neural_gpu.py:table6`` one seed (1458 runs) at a time, as many as fit. Every
training job leaves ``train.runs_per_batch`` to the device's memory. Each job gets a work
dir, a log and its report under ``$OUT/<job>/``; the reports are printed as Markdown and
collected, with a table of what ran, in ``$OUT/summary.md``.

The budget is the wall time of the whole script; the benchmarks get at most 30% of it.
Each training job first runs 2 epochs as a probe (which also fills the persistent
compilation cache), estimates the full run from the probe's epoch time, and then runs in
full if it fits in what is left, else with as many epochs as fit (the output says
"reduced"), else not at all ("skipped"); nothing starts once the budget is spent, and a job
still running at the deadline is stopped there ("stopped").

Preparation, here, before handing the checkout over (copies the wheels of
../shared/wheels, ../shared/data/mnist/mnist.npz and the bAbI ``en`` tasks into
``.device/``, about 19 MB; .gitignore keeps the folder out of git):

    python benchmarks/accelerator.py --prepare [--shared=../shared]

and carry ``.device`` with the run (the device tool's ``carry: [".device"]``).
"""

from __future__ import annotations

import argparse
import dataclasses
import glob
import json
import math
import os
import re
import selectors
import shlex
import shutil
import subprocess
import sys
import threading
import time
from typing import Sequence

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEVICE_DIR = os.path.join(REPO, ".device")
PROBE_EPOCHS = 2
RESERVE_S = 10.0  # kept for the summary at the end
BENCHMARK_SHARE = 0.3  # of the budget, at most, for the benchmarks
BABI = os.path.join("babi", "tasks_1-20_v1-2")
MNIST = os.path.join("mnist", "mnist.npz")
JOBS = ("benchmarks", "table1", "table2", "table5", "table6")


@dataclasses.dataclass
class Outcome:
  """What became of one job: its status ("done", "reduced", "skipped", "stopped",
  "failed"), the epochs it ran of its protocol's, and its wall seconds."""

  job: str
  status: str
  detail: str = ""
  epochs: str = ""
  seconds: float = 0.0


class Budget:
  """A wall-clock budget: ``seconds`` from now, less ``reserve``."""

  def __init__(self, seconds: float, reserve: float = RESERVE_S):
    self.deadline = time.monotonic() + seconds - reserve

  def left(self) -> float:
    return self.deadline - time.monotonic()


def prepare(shared: str) -> None:
  """Copies what the accelerator run needs into the git-ignored .device/."""
  os.makedirs(DEVICE_DIR, exist_ok=True)
  for wheel in glob.glob(os.path.join(shared, "wheels", "*.whl")):
    shutil.copy2(wheel, DEVICE_DIR)
  os.makedirs(os.path.join(DEVICE_DIR, "mnist"), exist_ok=True)
  shutil.copy2(os.path.join(shared, "data", MNIST), os.path.join(DEVICE_DIR, MNIST))
  # Copied over any earlier copy (never deleted); .gitignore keeps .device/ out of git.
  shutil.copytree(os.path.join(shared, "data", BABI, "en"),
                  os.path.join(DEVICE_DIR, BABI, "en"), dirs_exist_ok=True)
  size = sum(os.path.getsize(os.path.join(root, name))
             for root, _, names in os.walk(DEVICE_DIR) for name in names)
  print(f"prepared {DEVICE_DIR}: {size / 2**20:.1f} MiB; carry '.device' with the run")


def install() -> None:
  """Installs the carried wheels (no network) unless their packages import already."""
  wheels = sorted(glob.glob(os.path.join(DEVICE_DIR, "*.whl")))
  probe = [sys.executable, "-c", "import ml_collections, tensorboardX, mlxtend"]
  if wheels and subprocess.run(probe, capture_output=True).returncode != 0:
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps",
                    *wheels], check=True)


class RowTimes(threading.Thread):
  """Notes when each (run, epoch) row first appears in a work dir's metrics.jsonl."""

  def __init__(self, workdir: str):
    super().__init__(daemon=True)
    self.path = os.path.join(workdir, "metrics.jsonl")
    self.start_time = time.monotonic()
    self.seen: dict[tuple[int, int], float] = {}
    self.done = threading.Event()

  def run(self) -> None:
    offset, partial = 0, ""
    while not self.done.wait(0.05):
      try:
        with open(self.path) as f:
          f.seek(offset)
          text = f.read()
      except FileNotFoundError:
        continue
      offset += len(text.encode())
      *lines, partial = (partial + text).split("\n")
      now = time.monotonic() - self.start_time
      for line in lines:
        row = json.loads(line)
        self.seen.setdefault((row["run"], row["epoch"]), now)


def run(cmd: Sequence[str], log: str, timeout: float) -> tuple[int | None, list[tuple[float, str]]]:
  """Runs ``cmd`` in the repository, its output to ``log`` with each line's time since the
  start; returns (exit code, None if stopped at ``timeout``) and the timed lines."""
  env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""),
             PYTHONUNBUFFERED="1")
  start = time.monotonic()
  lines: list[tuple[float, str]] = []
  with open(log, "w") as f:
    f.write("$ " + shlex.join(cmd) + "\n")
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
      selector = selectors.DefaultSelector()
      selector.register(proc.stdout, selectors.EVENT_READ)
      while True:
        wait = start + timeout - time.monotonic()
        if wait <= 0:
          raise subprocess.TimeoutExpired(cmd, timeout)
        if selector.select(min(wait, 1.0)):
          line = proc.stdout.readline()
          if not line:
            break
          lines.append((time.monotonic() - start, line.rstrip("\n")))
          f.write(line)
      return proc.wait(), lines
    except subprocess.TimeoutExpired:
      os.killpg(proc.pid, 9)
      proc.wait()
      f.write(f"[stopped at the budget after {time.monotonic() - start:.0f} s]\n")
      return None, lines


def benchmarks(out: str, runs: Sequence[int], budget: Budget) -> list[Outcome]:
  """sweep_throughput.py once per group size (so each figure survives a stop), then
  noise_overhead.py and noise_options.py, each within what ``budget`` (their share) leaves."""
  folder = os.path.join(out, "benchmarks")
  os.makedirs(folder, exist_ok=True)
  outcomes = []
  commands = [(f"sweep_throughput, {n} runs", ["benchmarks/sweep_throughput.py", f"--runs={n}",
                                               "--trainer_only"]) for n in runs]
  commands.append(("noise_overhead", ["benchmarks/noise_overhead.py"]))
  commands.append(("noise_options", ["benchmarks/noise_options.py"]))
  for name, args in commands:
    if budget.left() <= 0:
      outcomes.append(Outcome(name, "skipped", "budget spent"))
      continue
    started = time.monotonic()
    code, lines = run([sys.executable, *args], os.path.join(folder, name.replace(", ", "_")
                                                            .replace(" ", "_") + ".txt"),
                      budget.left())
    status = "done" if code == 0 else "stopped" if code is None else "failed"
    first = next((i for i, (_, l) in enumerate(lines) if l.startswith("machine:")), len(lines))
    table = [l for _, l in lines[first:]]
    print(f"## {name}: {status}\n" + "\n".join(table), flush=True)
    outcomes.append(Outcome(name, status, seconds=time.monotonic() - started))
  return outcomes


@dataclasses.dataclass
class TrainJob:
  """A gradnoise.run job: the config, extra arguments, and the report command (python
  arguments; ``{workdir}`` and ``{out}`` are filled in). ``epochs``: the protocol's, from
  the config."""

  name: str
  config: str
  args: list[str]
  report: list[str]
  epochs: int = 0

  def __post_init__(self):
    self.epochs = self.epochs or config_epochs(self.config)


def timed_probe(lines: list[tuple[float, str]], rows: dict[tuple[int, int], float],
                wall: float) -> tuple[float, float]:
  """(fixed seconds, seconds per epoch of all runs) from a probe: the steady epoch is the
  time between the first run's epoch-1 and epoch-2 metrics (training and evaluation, both
  compiled by then), times the batches of runs in the plan; the rest of the probe's wall
  time (start-up, compiling, checkpoints, exit) is the fixed part."""
  batches = sum(math.ceil(int(m.group(1)) / int(m.group(2))) for _, l in lines
                for m in [re.match(r"\s*group \d+: (\d+) runs, .*, (\d+) runs at once", l)]
                if m)
  first = min((run for run, _ in rows), default=None)
  if (first, 2) not in rows:  # no timed epochs: all of the probe counts as epochs
    return 0.0, wall / PROBE_EPOCHS
  epoch = (rows[(first, 2)] - rows[(first, 1)]) * max(batches, 1)
  return max(wall - PROBE_EPOCHS * epoch, 0.0), max(epoch, 1e-3)


def train(job: TrainJob, out: str, budget: Budget,
          estimate: tuple[float, float] | None = None) -> tuple[Outcome, tuple[float, float]]:
  """Probes ``job`` (unless ``estimate`` is given), then runs it in full, reduced or not at
  all; writes its report. Returns the outcome and the (start-up, epoch) estimate."""
  folder = os.path.join(out, job.name)
  os.makedirs(folder, exist_ok=True)
  started = time.monotonic()
  base = [sys.executable, "-m", "gradnoise.run", f"--config={job.config}",
          "--config.train.runs_per_batch=None", *job.args]
  if estimate is None and job.epochs > PROBE_EPOCHS:
    if budget.left() <= 0:
      return Outcome(job.name, "skipped", "budget spent", f"0/{job.epochs}"), None
    rows = RowTimes(os.path.join(folder, "probe"))
    rows.start()
    code, lines = run(base + [f"--config.num_epochs={PROBE_EPOCHS}",
                              f"--workdir={os.path.join(folder, 'probe')}"],
                      os.path.join(folder, "probe.log"), budget.left())
    rows.done.set()
    rows.join()
    if code != 0:
      status = "skipped" if code is None else "failed"
      return Outcome(job.name, status, f"the {PROBE_EPOCHS}-epoch probe "
                     f"{'did not finish in the budget' if code is None else 'failed'} "
                     f"(see {job.name}/probe.log)", f"0/{job.epochs}",
                     time.monotonic() - started), None
    estimate = timed_probe(lines, rows.seen, time.monotonic() - started)
  epochs = job.epochs
  if estimate is not None:
    fixed, per_epoch = estimate
    epochs = min(job.epochs, math.floor((budget.left() - fixed) / per_epoch))
  if epochs < 1 or budget.left() <= 0:
    return Outcome(job.name, "skipped", "does not fit in the budget left", f"0/{job.epochs}",
                   time.monotonic() - started), estimate
  workdir = os.path.join(folder, "workdir")
  code, _ = run(base + [f"--config.num_epochs={epochs}", f"--workdir={workdir}"],
                os.path.join(folder, "train.log"), budget.left())
  seconds = time.monotonic() - started
  if code != 0:
    status = "stopped" if code is None else "failed"
    return Outcome(job.name, status, f"see {job.name}/train.log", f"?/{job.epochs}",
                   seconds), estimate
  report_dir = os.path.join(folder, "report")
  _, lines = run([sys.executable, *[a.format(workdir=workdir, out=report_dir)
                                     for a in job.report]],
                 os.path.join(folder, "report.log"), max(budget.left(), 30.0))
  written = os.path.join(report_dir, "report.md")
  text = open(written).read() if os.path.exists(written) else "\n".join(l for _, l in lines)
  with open(os.path.join(folder, "report.md"), "w") as f:
    f.write(text)
  reduced = epochs < job.epochs
  return Outcome(job.name, "reduced" if reduced else "done",
                 f"{epochs} of {job.epochs} epochs fit" if reduced else "",
                 f"{epochs}/{job.epochs}", seconds), estimate


def seed_config(out: str, config: str, seed: int) -> str:
  """A config file that runs the sweep of ``config`` (path:variant) for one seed."""
  path, variant = config.split(":")
  file = os.path.join(out, f"seed_{seed}_{os.path.basename(path)}")
  with open(file, "w") as f:
    f.write("import importlib.util\n"
            "_spec = importlib.util.spec_from_file_location("
            f"'_base', {os.path.join(REPO, path)!r})\n"
            "_base = importlib.util.module_from_spec(_spec)\n"
            "_spec.loader.exec_module(_base)\n"
            "VARIANTS, get_config = _base.VARIANTS, _base.get_config\n\n\n"
            "def get_sweep(arg):\n"
            f"  return [o for o in _base.get_sweep(arg) if o.get('seed') == {seed}]\n")
  return f"{file}:{variant}"


def summary(outcomes: Sequence[Outcome], out: str, wall: float) -> str:
  lines = [f"Accelerator run: {wall / 60:.1f} min wall.", "",
           "| job | status | epochs run / protocol | wall | note |", "|---|---|---|---|---|"]
  for o in outcomes:
    lines.append(f"| {o.job} | {o.status} | {o.epochs} | {o.seconds:.0f} s | {o.detail} |")
  reports = sorted(glob.glob(os.path.join(out, "*", "report.md")))
  for report in reports:
    lines += ["", f"### {os.path.basename(os.path.dirname(report))}", ""]
    lines += open(report).read().splitlines()
  return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--budget", type=float, default=540.0,
                      help="wall seconds for the whole script (default 9 minutes)")
  parser.add_argument("--out", default=os.environ.get("OUT", "accelerator-out"),
                      help="output folder (default $OUT)")
  parser.add_argument("--data", default=DEVICE_DIR if os.path.isdir(DEVICE_DIR)
                      else os.path.join(REPO, "..", "shared", "data"),
                      help=f"folder holding {MNIST} and {BABI} (default .device/)")
  parser.add_argument("--runs", default="1,8,32,128,512", help="benchmark group sizes")
  parser.add_argument("--jobs", default=",".join(JOBS), help=f"subset of {','.join(JOBS)}")
  parser.add_argument("--args", action="append", default=[], metavar="JOB=ARGS",
                      help="extra gradnoise.run arguments for a job, e.g. "
                      "'table1=--config.model.depth=2' (repeatable)")
  parser.add_argument("--seeds", type=int, default=10, help="table6 seeds at most")
  parser.add_argument("--prepare", action="store_true", help="fill .device/ and exit")
  parser.add_argument("--shared", default=os.path.join(REPO, "..", "shared"),
                      help="for --prepare: the shared folder (wheels/, data/)")
  args = parser.parse_args(argv)
  if args.prepare:
    prepare(args.shared)
    return 0
  started = time.monotonic()
  budget = Budget(args.budget)
  out = os.path.abspath(args.out)
  os.makedirs(out, exist_ok=True)
  jobs = args.jobs.split(",")
  extra = {}
  for item in args.args:
    name, _, value = item.partition("=")
    extra[name] = extra.get(name, []) + shlex.split(value)
  install()
  subprocess.run([sys.executable, "-c", "import jax; print('jax', jax.__version__, "
                  "jax.devices())"], cwd=REPO)
  subprocess.run("nvidia-smi --query-gpu=name,memory.total --format=csv,noheader "
                 "2>/dev/null || true", shell=True)
  outcomes: list[Outcome] = []
  if "benchmarks" in jobs:
    share = Budget(min(BENCHMARK_SHARE * args.budget, budget.left()), reserve=0.0)
    outcomes += benchmarks(out, [int(n) for n in args.runs.split(",")], share)
  data = os.path.abspath(args.data)
  report = ["-m", "gradnoise.report", "{workdir}", "--out={out}", "--noplots"]
  train_jobs = [
      TrainJob("table1", "configs/mnist_mlp.py:table1",
               ["--config.data.source=npz", f"--config.data.path={os.path.join(data, MNIST)}"],
               report + ["--group_by=model.init,clip.norm,model.dropout_rate"]),
      TrainJob("table2", "configs/memnet_babi.py:table2",
               [f"--config.data.path={os.path.join(data, BABI)}"],
               ["-m", "experiments.babi_table", "{workdir}"]),
  ]
  if os.path.exists(os.path.join(REPO, "configs", "nram.py")):
    train_jobs.append(TrainJob("table5", "configs/nram.py:table5", [], report))
  for job in train_jobs:
    if job.name in jobs:
      job.args += extra.get(job.name, [])
      outcomes.append(report_outcome(train(job, out, budget)[0], out))
  if "table6" in jobs:
    estimate = None
    for seed in range(args.seeds):
      job = TrainJob(f"table6_seed{seed}", seed_config(out, "configs/neural_gpu.py:table6",
                                                       seed), extra.get("table6", []),
                     report + ["--metric=test_seq_error", "--thresholds=0.01,0.02,0.03,0.05"],
                     config_epochs("configs/neural_gpu.py:table6"))
      outcome, estimate = train(job, out, budget, estimate)
      outcomes.append(report_outcome(outcome, out))
      if outcome.status != "done":
        break
  text = summary(outcomes, out, time.monotonic() - started)
  with open(os.path.join(out, "summary.md"), "w") as f:
    f.write(text)
  print(text)
  return 0


def report_outcome(outcome: Outcome, out: str) -> Outcome:
  """Prints a training job's outcome and its report (Markdown)."""
  print(f"## {outcome.job}: {outcome.status} {outcome.epochs} epochs, {outcome.seconds:.0f} s"
        f" {outcome.detail}".rstrip(), flush=True)
  report = os.path.join(out, outcome.job, "report.md")
  if outcome.status in ("done", "reduced") and os.path.exists(report):
    print(open(report).read(), flush=True)
  return outcome


def config_epochs(config: str) -> int:
  """``num_epochs`` of a built-in config (path:variant)."""
  sys.path.insert(0, REPO)
  from gradnoise import launch
  return launch.load_config_file(os.path.join(REPO, config))[0].num_epochs


if __name__ == "__main__":
  sys.exit(main())
