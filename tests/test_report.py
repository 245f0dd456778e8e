"""gradnoise.report on synthetic work dirs with hand-chosen numbers."""

import ast
import csv
import functools
import json
import math
import os
import statistics
import subprocess
import sys

import numpy as np
import pytest
from scipy import stats

from gradnoise import report
from gradnoise.errors import UsageError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NAN = math.nan
# (model.init, noise.eta) -> final test accuracy of seeds 0..3; NaN: the run diverged.
ACC = {
    ("simple", 0.0): [0.90, 0.92, 0.85, 0.97],
    ("simple", 0.01): [0.95, 0.96, 0.91, 1.00],
    ("good", 0.0): [1.00, 0.99, 1.00, 0.98],
    ("good", 0.01): [1.00, 1.00, NAN, 0.99],
}
STEPS = (100, 200, 300)


def fmt(value):
  """A results.csv cell as the trainer writes it."""
  if isinstance(value, bool):
    return "true" if value else "false"
  return repr(value) if isinstance(value, float) and math.isfinite(value) else str(value)


def write_workdir(path, acc=ACC, seeds=range(4), finished=None, partial_line=True,
                  noise=lambda level: {"noise.eta": level}, schedule=None):
  """A work dir of the sweep init x noise level x seeds; results for the first ``finished``
  runs. ``noise``: a level's overrides; ``schedule``: the base config's noise.schedule (the
  base config's noise.eta and noise.std are nonzero)."""
  seeds = list(seeds)
  inits = list(dict.fromkeys(k[0] for k in acc))
  levels = list(dict.fromkeys(k[1] for k in acc))
  grid = [(i, level, s) for i in inits for level in levels for s in seeds]
  sweep = [{"model.init": i, **noise(level), "seed": s} for i, level, s in grid]
  config = {"model": {"init": "simple", "depth": 20},
            "noise": {"eta": 1.0, "gamma": 0.55, "std": 0.001},
            "optimizer": {"learning_rate": 0.1}, "seed": 0}
  if schedule:
    config["noise"]["schedule"] = schedule
  swept = list(dict.fromkeys(k for o in sweep for k in o if k != "seed"))
  os.makedirs(path, exist_ok=True)
  with open(os.path.join(path, "config.json"), "w") as f:
    json.dump({"config": config, "sweep": sweep}, f)
  finished = len(sweep) if finished is None else finished
  if finished:
    with open(os.path.join(path, "results.csv"), "w", newline="") as f:
      writer = csv.writer(f, lineterminator="\n")
      writer.writerow(["run", *swept, "seed", "test_accuracy", "best_test_accuracy",
                       "train_loss", "test_error", "diverged"])
      for run_id, (o, (i, level, s)) in enumerate(zip(sweep[:finished], grid)):
        a = acc[(i, level)][seeds.index(s)]
        values = [o.get(k, functools.reduce(dict.get, k.split("."), config)) for k in swept]
        writer.writerow([fmt(v) for v in (run_id, *values, s, a, a, 0.01 * (run_id + 1),
                                           1 - a, not math.isfinite(a))])
  with open(os.path.join(path, "metrics.jsonl"), "w") as f:
    for step in STEPS:
      for run_id, (i, level, s) in enumerate(grid):
        a = acc[(i, level)][seeds.index(s)]
        f.write(json.dumps({"run": run_id, "step": step, "epoch": step // 100,
                            "train_loss": (1 + run_id / 10) / step,
                            "test_accuracy": a * step / STEPS[-1]}) + "\n")
    if partial_line:
      f.write('{"run": 0, "step": 40')
  return path


def arm(rep, setting, noise):
  (found,) = [a for a in rep.arms
              if a.setting.label == setting and a.arm.noise == noise]
  return found


def pair(rep, setting, noise):
  (found,) = [p for p in rep.pairs
              if p.setting.label == setting and p.arm.noise == noise]
  return found


def finite(values):
  return [v for v in values if math.isfinite(v)]


@pytest.fixture
def workdir(tmp_path):
  return write_workdir(str(tmp_path / "wd"))


def analyze(workdirs, **kwargs):
  return report.analyze(report.load_runs(workdirs), **kwargs)


def test_summary_table_values(workdir):
  rep = analyze([workdir], thresholds=[0.95, 1.0])
  assert rep.higher_is_better and rep.group_by == ["model.init"]
  assert [s.label for s in rep.settings] == ["model.init=simple", "model.init=good"]
  for (init, eta), values in ACC.items():
    a = arm(rep, f"model.init={init}", eta)
    ok = finite(values)
    sd = statistics.stdev(ok)
    assert a.arm.label == ("no noise" if eta == 0 else "noise")
    assert a.arm.field == ("" if eta == 0 else "noise.eta")
    assert a.runs == 4
    assert a.diverged == a.nonfinite == 4 - len(ok)
    assert a.best == max(ok)
    assert a.mean == pytest.approx(statistics.mean(ok), abs=1e-15)
    assert a.sd == pytest.approx(sd, rel=1e-12)
    assert a.ci95 == pytest.approx(stats.t.ppf(0.975, len(ok) - 1) * sd / math.sqrt(len(ok)),
                                   rel=1e-12)
  assert arm(rep, "model.init=simple", 0.0).sd == pytest.approx(math.sqrt(0.0074 / 3))
  assert [arm(rep, s, e).passed for s in ("model.init=simple", "model.init=good")
          for e in (0.0, 0.01)] == [(1, 0), (3, 1), (4, 2), (3, 2)]


def test_lower_is_better_metric_is_automatic(workdir):
  rep = analyze([workdir], metric="test_error", thresholds=[0.02, 0.06])
  assert not rep.higher_is_better
  a = arm(rep, "model.init=simple", 0.01)
  assert a.best == pytest.approx(0.0) and a.passed == (1, 3)
  assert arm(rep, "model.init=good", 0.01).passed == (3, 3)  # the NaN run fails both
  assert analyze([workdir], metric="test_error", higher_is_better=True).higher_is_better


def test_paired_comparison_matches_scipy(workdir):
  rep = analyze([workdir])
  noise, base = np.array(ACC[("simple", 0.01)]), np.array(ACC[("simple", 0.0)])
  p = pair(rep, "model.init=simple", 0.01)
  assert (p.pairs, p.dropped) == (4, 0)
  assert p.mean_diff == pytest.approx(0.045)
  assert p.p_ttest == pytest.approx(stats.ttest_rel(noise, base).pvalue, rel=1e-12)
  assert math.isnan(p.p_wilcoxon)  # fewer than 6 pairs
  p = pair(rep, "model.init=good", 0.01)
  assert (p.pairs, p.dropped) == (3, 1)  # seed 2 diverged with noise
  assert p.mean_diff == pytest.approx(0.02 / 3)
  keep = [0, 1, 3]
  assert p.p_ttest == pytest.approx(stats.ttest_rel(np.array(ACC[("good", 0.01)])[keep],
                                                    np.array(ACC[("good", 0.0)])[keep]).pvalue)


def test_group_by_noise_field_pairs_within_other_fields(workdir):
  rep = analyze([workdir], group_by=["noise.eta"])
  assert rep.group_by == [] and [s.label for s in rep.settings] == ["all runs"]
  assert arm(rep, "all runs", 0.0).runs == 8
  p = pair(rep, "all runs", 0.01)
  diffs = [n - b for k in ("simple", "good") for n, b in zip(ACC[(k, 0.01)], ACC[(k, 0.0)])]
  assert (p.pairs, p.dropped) == (7, 1)
  assert p.mean_diff == pytest.approx(statistics.mean(finite(diffs)))
  assert p.p_wilcoxon == pytest.approx(stats.wilcoxon(finite(diffs)).pvalue)


def test_several_noise_levels_each_paired_with_no_noise(tmp_path):
  acc = {("simple", 0.0): [0.5, 0.6], ("simple", 0.01): [0.7, 0.9],
         ("simple", 0.3): [0.4, 0.4]}
  rep = analyze([write_workdir(str(tmp_path / "wd"), acc, seeds=range(2))])
  assert [a.arm.label for a in rep.arms] == ["no noise", "noise (eta 0.01)", "noise (eta 0.3)"]
  assert [p.arm.noise for p in rep.pairs] == [0.01, 0.3]
  assert [p.mean_diff for p in rep.pairs] == pytest.approx([0.25, -0.15])


def test_two_workdirs_are_combined(tmp_path):
  more = {k: [v[0] - 0.01, v[1] - 0.02, v[2], v[3]] for k, v in ACC.items()}
  a = write_workdir(str(tmp_path / "a"))
  b = write_workdir(str(tmp_path / "b"), more, seeds=range(4, 8))
  data = report.load_runs([a, b])
  assert {r.workdir for r in data.runs} == {a, b} and len(data.runs) == 32
  rep = report.analyze(data)
  x = arm(rep, "model.init=simple", 0.0)
  assert x.runs == 8
  assert x.mean == pytest.approx(statistics.mean(ACC[("simple", 0.0)] + more[("simple", 0.0)]))
  p = pair(rep, "model.init=simple", 0.01)
  noise = np.array(ACC[("simple", 0.01)] + more[("simple", 0.01)])
  base = np.array(ACC[("simple", 0.0)] + more[("simple", 0.0)])
  assert p.pairs == 8
  assert p.p_ttest == pytest.approx(stats.ttest_rel(noise, base).pvalue)
  assert p.p_wilcoxon == pytest.approx(stats.wilcoxon(noise - base).pvalue)


def test_partial_metrics_line_is_ignored(workdir):
  data = report.load_runs([workdir])
  assert [len(r.curve) for r in data.runs] == [len(STEPS)] * 16
  assert data.curve_metrics == ["train_loss", "test_accuracy"]


def test_running_sweep_without_results(tmp_path, capsys):
  wd = write_workdir(str(tmp_path / "wd"), finished=0)
  data = report.load_runs([wd])
  assert "no results.csv" in capsys.readouterr().err
  assert len(data.runs) == 16 and all(r.final is None for r in data.runs)
  assert data.runs[5].overrides == {"model.init": "simple", "noise.eta": 0.01}
  assert data.runs[5].seed == 1
  rep = report.analyze(data)
  assert [s.label for s in rep.settings] == ["model.init=simple", "model.init=good"]
  assert rep.arms == [] and rep.unfinished == 16
  out = str(tmp_path / "out")
  text = report.make_report([wd], out)
  assert "No finished runs yet" in text
  assert sorted(os.listdir(out)) == ["curves_00_model.init-simple.png",
                                     "curves_01_model.init-good.png", "report.md",
                                     "summary.csv"]


def test_partly_finished_sweep(tmp_path):
  wd = write_workdir(str(tmp_path / "wd"), finished=6)
  rep = analyze([wd])
  assert rep.unfinished == 10
  assert [a.runs for a in rep.arms] == [4, 2]
  assert len(rep.settings[1].arms[0].runs) == 4  # unfinished runs still have curves


def test_markdown_csv_and_pngs(workdir, tmp_path):
  out = str(tmp_path / "out")
  text = report.make_report([workdir], out, thresholds=[0.95, 1.0])
  with open(os.path.join(out, "report.md")) as f:
    assert f.read() == text
  sd = statistics.stdev(ACC[("simple", 0.0)])
  ci = stats.t.ppf(0.975, 3) * sd / 2
  assert (f"| model.init=simple | no noise | 4 | 0 | 0 | 0.97 | 0.91 | {sd:.4g} | {ci:.4g} |"
          in text)
  assert "| model.init=good | noise | 4 | 1 | 1 | 1 | 0.9967 |" in text
  assert "| setting | threshold | no noise | noise |" in text
  assert "| model.init=simple | test_accuracy >= 1 | 0/4 | 1/4 |" in text
  assert "| model.init=simple | noise | 4 | 0.045 |" in text
  assert "Noise level: noise.eta (noise.schedule=annealed); 0 or unset: no noise." in text
  with open(os.path.join(out, "summary.csv")) as f:
    rows = list(csv.DictReader(f))
  assert [(r["model.init"], r["noise_field"], r["noise"], r["runs"], r["runs_ge_1"])
          for r in rows] == [
      ("simple", "", "0.0", "4", "0"), ("simple", "noise.eta", "0.01", "4", "1"),
      ("good", "", "0.0", "4", "2"), ("good", "noise.eta", "0.01", "4", "2")]
  assert float(rows[0]["mean"]) == pytest.approx(0.91) and rows[0]["pairs"] == ""
  assert float(rows[1]["mean_diff"]) == pytest.approx(0.045) and rows[1]["ci95"]
  pngs = sorted(f for f in os.listdir(out) if f.endswith(".png"))
  assert pngs == ["curves_00_model.init-simple.png", "curves_01_model.init-good.png",
                  "final_test_accuracy.png"]
  for name in pngs:
    assert f"![{name}]({name})" in text
    with open(os.path.join(out, name), "rb") as f:
      data = f.read()
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and 1024 < len(data) < 150_000


# (model.init, noise.std) -> final test accuracy of seeds 0..3, for noise.schedule=constant.
ACC_STD = {
    ("simple", 0.0): [0.50, 0.60, 0.55, 0.65],
    ("simple", 0.001): [0.70, 0.80, 0.75, 0.70],
    ("good", 0.0): [0.90, 0.91, 0.92, 0.93],
    ("good", 0.001): [0.94, 0.90, 0.92, 0.96],
}
MIXED = {  # a sweep over the schedule itself
    "off": {"noise.schedule": "annealed", "noise.eta": 0.0},
    "eta": {"noise.schedule": "annealed", "noise.eta": 0.01},
    "std": {"noise.schedule": "constant", "noise.std": 0.001},
}


def constant_workdir(path):
  return write_workdir(path, ACC_STD, noise=lambda std: {"noise.std": std}, schedule="constant")


def test_constant_schedule_arms_come_from_noise_std(tmp_path):
  wd = constant_workdir(str(tmp_path / "wd"))
  rep = analyze([wd])  # the base config's noise.eta (1.0) is unused by this schedule
  assert rep.group_by == ["model.init"]
  assert rep.noise_field == "noise.std (noise.schedule=constant)"
  assert [(s.label, [(a.label, a.field, a.noise, len(a.runs)) for a in s.arms])
          for s in rep.settings] == [
      (f"model.init={init}", [("no noise", "", 0.0, 4), ("noise", "noise.std", 0.001, 4)])
      for init in ("simple", "good")]
  assert arm(rep, "model.init=simple", 0.001).mean == pytest.approx(0.7375)
  p = pair(rep, "model.init=simple", 0.001)
  assert p.pairs == 4 and p.mean_diff == pytest.approx(0.1625)
  from gradnoise.launch import summary_table  # the end-of-run summary
  assert summary_table(wd).splitlines()[1:] == [
      "| setting | no noise: best | no noise: mean | no noise: runs | noise: best | "
      "noise: mean | noise: runs |",
      "| --- | --- | --- | --- | --- | --- | --- |",
      "| model.init=simple | 65.00% | 57.50% | 4 | 80.00% | 73.75% | 4 |",
      "| model.init=good | 93.00% | 91.50% | 4 | 96.00% | 93.00% | 4 |"]


def test_schedule_swept_in_one_workdir(tmp_path):
  acc = {("simple", "off"): [0.5, 0.6], ("simple", "eta"): [0.7, 0.9],
         ("simple", "std"): [0.4, 0.8]}
  wd = write_workdir(str(tmp_path / "wd"), acc, seeds=range(2), noise=MIXED.get)
  out = str(tmp_path / "out")
  text = report.make_report([wd], out, plots=False)
  rep = analyze([wd])
  assert rep.group_by == ["model.init"] and len(rep.settings) == 1
  assert [(a.arm.label, a.arm.field, a.arm.noise, a.runs) for a in rep.arms] == [
      ("no noise", "", 0.0, 2), ("noise (eta 0.01)", "noise.eta", 0.01, 2),
      ("noise (std 0.001)", "noise.std", 0.001, 2)]
  assert [(p.arm.label, p.pairs) for p in rep.pairs] == [
      ("noise (eta 0.01)", 2), ("noise (std 0.001)", 2)]
  assert [p.mean_diff for p in rep.pairs] == pytest.approx([0.25, 0.05])
  assert ("Noise level: noise.eta (noise.schedule=annealed), noise.std "
          "(noise.schedule=constant); 0 or unset: no noise.") in text
  assert "| model.init=simple | noise (std 0.001) | 2 | 0 | 0 | 0.8 | 0.6 |" in text
  with open(os.path.join(out, "summary.csv")) as f:
    rows = list(csv.DictReader(f))
  assert [(r["noise_field"], r["noise"], r["pairs"]) for r in rows] == [
      ("", "0.0", ""), ("noise.eta", "0.01", "2"), ("noise.std", "0.001", "2")]


def test_workdirs_of_both_schedules_share_the_no_noise_arm(tmp_path):
  annealed = write_workdir(str(tmp_path / "annealed"))  # no noise.schedule: annealed
  constant = constant_workdir(str(tmp_path / "constant"))
  rep = analyze([annealed, constant], thresholds=[0.95])
  assert rep.noise_field == ("noise.eta (noise.schedule=annealed), noise.std "
                             "(noise.schedule=constant)")
  assert [s.label for s in rep.settings] == ["model.init=simple", "model.init=good"]
  setting = rep.settings[0]
  assert [(a.label, len(a.runs)) for a in setting.arms] == [
      ("no noise", 8), ("noise (eta 0.01)", 4), ("noise (std 0.001)", 4)]
  assert arm(rep, "model.init=simple", 0.0).mean == pytest.approx(
      statistics.mean(ACC[("simple", 0.0)] + ACC_STD[("simple", 0.0)]))
  assert "| setting | threshold | no noise | noise (eta 0.01) | noise (std 0.001) |" in \
      report.to_markdown(rep)


def test_cli_takes_the_noise_field_from_the_schedule(tmp_path):
  wd = constant_workdir(str(tmp_path / "wd"))
  result = run_cli(wd, f"--out={tmp_path / 'out'}", "--noplots")
  assert result.returncode == 0, result.stderr
  assert "| model.init=simple | no noise | 4 | 0 | 0 | 0.65 | 0.575 |" in result.stdout
  assert "| model.init=simple | noise | 4 | 0 | 0 | 0.8 | 0.7375 |" in result.stdout
  explicit = run_cli(wd, f"--out={tmp_path / 'out'}", "--noplots", "--noise_field=noise.eta")
  assert "| model.init=simple, noise.std=0.001 | noise | 4 |" in explicit.stdout


def test_unknown_schedule_is_usage_error(tmp_path):
  wd = write_workdir(str(tmp_path / "wd"), schedule="cyclic")
  with pytest.raises(UsageError, match="noise.schedule='cyclic'.*--noise_field"):
    analyze([wd])
  assert analyze([wd], noise_field="noise.eta").settings[0].arms[1].label == "noise"


def test_single_run_has_blank_ci(tmp_path):
  rep = analyze([write_workdir(str(tmp_path / "wd"), {("simple", 0.0): [0.5]}, range(1))])
  (a,) = rep.arms
  assert a.mean == 0.5 and math.isnan(a.sd) and math.isnan(a.ci95)
  assert "| model.init=simple | no noise | 1 | 0 | 0 | 0.5 | 0.5 |  |  |" in \
      report.to_markdown(rep)


@pytest.mark.parametrize("call, message", [
    (lambda wd: report.load_runs([wd + "/missing"]), "does not exist"),
    (lambda wd: report.load_runs([]), "at least one WORKDIR"),
    (lambda wd: analyze([wd], metric="acc"), "available: test_accuracy, best_test_accuracy"),
    (lambda wd: analyze([wd], group_by=["model.width"]), "known fields: "),
    (lambda wd: analyze([wd], noise_field="noise.sigma"), "unknown field 'noise.sigma'"),
    (lambda wd: report.parse_thresholds("0.01,abc"), "'abc' is not a finite number"),
    (lambda wd: report.make_report([wd], wd + "/out", curves=["valid_loss"]),
     "available: train_loss, test_accuracy"),
    (lambda wd: report.load_runs([os.path.dirname(wd) + "/empty"]), "no runs in"),
])
def test_bad_input_is_usage_error(workdir, call, message):
  os.makedirs(os.path.dirname(workdir) + "/empty")
  with pytest.raises(UsageError, match=message):
    call(workdir)


def test_imports_only_allowed_modules():
  with open(os.path.join(REPO, "gradnoise", "report.py")) as f:
    tree = ast.parse(f.read())
  modules = {n.name for node in ast.walk(tree) if isinstance(node, ast.Import)
             for n in node.names}
  modules |= {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
  roots = {m.split(".")[0] for m in modules} - set(sys.stdlib_module_names)
  assert roots <= {"numpy", "scipy", "matplotlib", "absl", "gradnoise"}
  assert {m for m in modules if m.startswith("gradnoise")} == {"gradnoise.errors"}


def run_cli(*args):
  return subprocess.run([sys.executable, "-m", "gradnoise.report", *args], cwd=REPO,
                        capture_output=True, text=True, timeout=120)


def test_cli_bad_dir_exits_2_with_one_line(tmp_path):
  result = run_cli(str(tmp_path / "nope"))
  assert result.returncode == 2
  assert result.stderr.strip().splitlines() == [
      f"error: work dir {str(tmp_path / 'nope')!r} does not exist or is not a directory."]


def test_cli_writes_report(workdir, tmp_path):
  out = str(tmp_path / "out")
  result = run_cli(workdir, f"--out={out}", "--thresholds=0.95,1", "--curves=train_loss",
                   "--nohigher_is_better")
  assert result.returncode == 0, result.stderr
  assert "| model.init=simple | no noise | 4 | 0 | 0 | 0.85 |" in result.stdout
  assert "| model.init=simple | test_accuracy < 1 | 4/4 | 3/4 |" in result.stdout
  assert sorted(os.listdir(out)) == ["curves_00_model.init-simple.png",
                                     "curves_01_model.init-good.png",
                                     "final_test_accuracy.png", "report.md", "summary.csv"]
