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
from gradnoise.report.__main__ import parse_thresholds

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
                  noise=lambda level: {"noise.eta": level}, schedule=None, base=None,
                  metrics=lambda run_id, level, step: {}):
  """A work dir of the sweep init x noise level x seeds; results for the first ``finished``
  runs. ``noise``: a level's overrides; ``schedule``: the base config's noise.schedule (the
  base config's noise.eta and noise.std are nonzero); ``base``: more base config fields;
  ``metrics``: more metrics.jsonl values of a run, noise level and step."""
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
  config.update(base or {})
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
                            "test_accuracy": a * step / STEPS[-1],
                            **metrics(run_id, level, step)}) + "\n")
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
  # noise.eta is 1.0 in every run: the runs' noise.std tells the arms apart, in one setting.
  assert "| model.init=simple | noise (eta 1, std 0.001) | 4 |" in explicit.stdout
  assert "| model.init=simple | noise (eta 1, std 0) | 4 |" in explicit.stdout


def test_unknown_schedule_is_usage_error(tmp_path):
  wd = write_workdir(str(tmp_path / "wd"), schedule="cyclic")
  with pytest.raises(UsageError, match="noise.schedule='cyclic'.*--noise_field"):
    analyze([wd])
  assert analyze([wd], noise_field="noise.eta").settings[0].arms[1].label == "noise"


def test_noise_kinds_are_arms_paired_with_no_noise(tmp_path):
  # A family sweep: no noise, gaussian eta, and two kinds at the same sigma.
  noise = {"off": {"noise.kind": "gaussian", "noise.eta": 0.0},
           "eta": {"noise.kind": "gaussian", "noise.eta": 0.01},
           "anti": {"noise.kind": "anticorrelated", "noise.sigma": 0.1},
           "mult": {"noise.kind": "multiplicative", "noise.sigma": 0.1}}
  acc = {("simple", k): v for k, v in
         {"off": [0.5, 0.6], "eta": [0.7, 0.9], "anti": [0.6, 0.6], "mult": [0.4, 0.5]}.items()}
  wd = write_workdir(str(tmp_path / "wd"), acc, seeds=range(2), noise=noise.get)
  out = str(tmp_path / "out")
  text = report.make_report([wd], out, plots=False)
  rep = analyze([wd])
  assert rep.group_by == ["model.init"]
  assert rep.noise_field == ("noise.eta (noise.schedule=annealed), noise.sigma "
                             "(noise.kind=anticorrelated), noise.sigma (noise.kind=multiplicative)")
  assert [(a.arm.label, a.runs) for a in rep.arms] == [
      ("no noise", 2), ("anticorrelated (sigma 0.1)", 2), ("gaussian (eta 0.01)", 2),
      ("multiplicative (sigma 0.1)", 2)]
  assert [(p.arm.label, p.pairs) for p in rep.pairs] == [
      ("anticorrelated (sigma 0.1)", 2), ("gaussian (eta 0.01)", 2),
      ("multiplicative (sigma 0.1)", 2)]
  assert [p.mean_diff for p in rep.pairs] == pytest.approx([0.05, 0.25, -0.1])
  assert "| model.init=simple | multiplicative (sigma 0.1) | 2 | -0.1 |" in text
  with open(os.path.join(out, "summary.csv")) as f:
    rows = list(csv.DictReader(f))
  assert [r["noise_field"] for r in rows] == [
      "", "noise.sigma (anticorrelated)", "noise.eta", "noise.sigma (multiplicative)"]


def test_kind_specific_fields_make_arms_not_settings(tmp_path):
  # Perturbed GD at one radius with two waits, and gaussian noise, beside no noise: the
  # waits are arms of the one setting, each paired with the no-noise runs of its seeds;
  # wait is named only where it differs within perturbed.
  noise = {"off": {"noise.kind": "gaussian", "noise.eta": 0.0},
           "eta": {"noise.kind": "gaussian", "noise.eta": 0.01},
           "w10": {"noise.kind": "perturbed", "noise.radius": 30.0, "noise.wait": 10},
           "w30": {"noise.kind": "perturbed", "noise.radius": 30.0, "noise.wait": 30}}
  acc = {("simple", k): v for k, v in
         {"off": [0.5, 0.6], "eta": [0.7, 0.9], "w10": [0.6, 0.8], "w30": [0.4, 0.5]}.items()}
  wd = write_workdir(str(tmp_path / "wd"), acc, seeds=range(2), noise=noise.get)
  rep = analyze([wd])
  assert rep.group_by == ["model.init"]
  assert [s.label for s in rep.settings] == ["model.init=simple"]
  assert [(a.arm.label, a.runs) for a in rep.arms] == [
      ("no noise", 2), ("gaussian (eta 0.01)", 2), ("perturbed (radius 30, wait 10)", 2),
      ("perturbed (radius 30, wait 30)", 2)]
  assert [(p.arm.label, p.pairs) for p in rep.pairs] == [
      ("gaussian (eta 0.01)", 2), ("perturbed (radius 30, wait 10)", 2),
      ("perturbed (radius 30, wait 30)", 2)]
  assert [p.mean_diff for p in rep.pairs] == pytest.approx([0.25, 0.15, -0.1])
  # An explicit --group_by still splits on a noise field.
  split = analyze([wd], group_by=["model.init", "noise.wait"])
  assert [s.label for s in split.settings][1:] == [
      "model.init=simple, noise.wait=10", "model.init=simple, noise.wait=30"]


def test_report_knows_each_kinds_level_field():
  from gradnoise import trainer
  from gradnoise.report import group
  assert set(group.KIND_NOISE_FIELDS) | {group.GAUSSIAN} == set(trainer.NOISE_KIND_FIELDS)
  for kind, field in group.KIND_NOISE_FIELDS.items():
    assert field in trainer.NOISE_KIND_FIELDS[kind]
  assert set(group.SCHEDULE_NOISE_FIELDS) == set(trainer.NOISE_SCHEDULES)


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
    (lambda wd: parse_thresholds("0.01,abc"), "'abc' is not a finite number"),
    (lambda wd: report.make_report([wd], wd + "/out", curves=["valid_loss"]),
     "available: train_loss, test_accuracy"),
    (lambda wd: report.load_runs([os.path.dirname(wd) + "/empty"]), "no runs in"),
])
def test_bad_input_is_usage_error(workdir, call, message):
  os.makedirs(os.path.dirname(workdir) + "/empty")
  with pytest.raises(UsageError, match=message):
    call(workdir)


def imports(path):
  """The modules a source file imports (``from gradnoise import x``: ``gradnoise.x``)."""
  with open(path) as f:
    tree = ast.parse(f.read())
  modules = {n.name for node in ast.walk(tree) if isinstance(node, ast.Import)
             for n in node.names}
  for node in ast.walk(tree):
    if isinstance(node, ast.ImportFrom):
      modules |= {node.module} | {f"{node.module}.{n.name}" for n in node.names
                                  if node.module == "gradnoise"}
  return modules


def test_imports_only_allowed_modules():
  package = os.path.join(REPO, "gradnoise", "report")
  by_file = {name: imports(os.path.join(package, name)) for name in os.listdir(package)
             if name.endswith(".py")}
  modules = set().union(*by_file.values())
  roots = {m.split(".")[0] for m in modules} - set(sys.stdlib_module_names)
  assert roots <= {"numpy", "scipy", "matplotlib", "absl", "gradnoise"}
  assert {m for m in modules if m.startswith("gradnoise") and
          not m.startswith("gradnoise.report")} == {
      "gradnoise", "gradnoise.errors", "gradnoise.results_format", "gradnoise.experiment"}
  # matplotlib only in plots.py, the experiment (jax) only in defaults.py
  assert [n for n, m in by_file.items() if any(x.startswith("matplotlib") for x in m)] == \
      ["plots.py"]
  assert [n for n, m in by_file.items() if "gradnoise.experiment" in m] == ["defaults.py"]
  assert imports(os.path.join(REPO, "gradnoise", "results_format.py")) <= \
      set(sys.stdlib_module_names) | {"__future__"}


def test_import_loads_neither_matplotlib_nor_flax():
  code = ("import sys, gradnoise.report, gradnoise.workdir; print(sorted(m for m in "
          "('matplotlib', 'flax', 'tensorflow_datasets') if m in sys.modules))")
  result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                          text=True, timeout=120)
  assert result.stdout.strip() == "[]", result.stderr


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


# The report of the `workdir` fixture with thresholds 0.95,1 ({wd}: its path), as the single
# report.py wrote it before the package split, but for two sentences added since: the
# pairing rule ("Pairs: ...") and the note on the absent noise diagnostics.
GOLDEN_MD = """\
# Gradient noise: test_accuracy

Work dirs: {wd}. Settings grouped by: model.init. Noise level: noise.eta \
(noise.schedule=annealed); 0 or unset: no noise. test_accuracy: higher is better.

## Final test_accuracy

| setting | noise | runs | diverged | non-finite | best | mean | sd | 95% CI ± |
|---|---|---|---|---|---|---|---|---|
| model.init=simple | no noise | 4 | 0 | 0 | 0.97 | 0.91 | 0.04967 | 0.07903 |
| model.init=simple | noise | 4 | 0 | 0 | 1 | 0.955 | 0.03697 | 0.05883 |
| model.init=good | no noise | 4 | 0 | 0 | 1 | 0.9925 | 0.009574 | 0.01523 |
| model.init=good | noise | 4 | 1 | 1 | 1 | 0.9967 | 0.005774 | 0.01434 |

runs: finished runs. Diverged runs keep their final value. Non-finite values (NaN, inf) are \
left out of best, mean, sd and CI (n = finite runs) and count as failures in threshold \
counts. sd: ddof=1; 95% CI: half-width t(0.975, n-1)·sd/√n, blank for n = 1.

## Runs with test_accuracy >= threshold

| setting | threshold | no noise | noise |
|---|---|---|---|
| model.init=simple | test_accuracy >= 0.95 | 1/4 | 3/4 |
| model.init=simple | test_accuracy >= 1 | 0/4 | 1/4 |
| model.init=good | test_accuracy >= 0.95 | 4/4 | 3/4 |
| model.init=good | test_accuracy >= 1 | 2/4 | 2/4 |

Cells: runs meeting the threshold / finished runs; non-finite values never do.

## Paired by seed: noise minus no noise

| setting | noise | pairs | mean diff | t-test p | Wilcoxon p |
|---|---|---|---|---|---|
| model.init=simple | noise | 4 | 0.045 | 0.00606 |  |
| model.init=good | noise | 3 | 0.006667 | 0.184 |  |

Pairs: runs of one setting with the same seed and the same values of every other field \
outside noise.* (base configs included). Two-sided paired t-test (scipy.stats.ttest_rel); \
Wilcoxon signed-rank only with >= 6 nonzero differences. 1 pairs with a non-finite value \
left out.

## Figures

![curves_00_model.init-simple.png](curves_00_model.init-simple.png)
![curves_01_model.init-good.png](curves_01_model.init-good.png)
![final_test_accuracy.png](final_test_accuracy.png)

No noise diagnostics in metrics.jsonl (train_noise_to_grad, train_clipped_fraction, \
train_grad_norm, train_clipped_grad_norm, train_noise_norm): no diagnostics figure.
"""
# summary.csv of the same report, unchanged by the split.
GOLDEN_CSV = """\
setting,model.init,noise_field,noise,runs,diverged,nonfinite,best,mean,sd,ci95,runs_ge_0.95,\
runs_ge_1,pairs,mean_diff,p_ttest,p_wilcoxon,selected
model.init=simple,simple,,0.0,4,0,0,0.97,0.9099999999999999,0.0496655480858378,\
0.07902897000283242,1,0,,,,,
model.init=simple,simple,noise.eta,0.01,4,0,0,1.0,0.955,0.03696845502136471,\
0.05882506154739453,3,1,4,0.044999999999999984,0.006056848795908414,,
model.init=good,good,,0.0,4,0,0,1.0,0.9925,0.00957427107756339,0.015234801808288137,4,2,,,,,
model.init=good,good,noise.eta,0.01,4,1,1,1.0,0.9966666666666667,0.005773502691896262,\
0.014342175765831553,3,2,3,0.006666666666666672,0.18350341907227397,,
"""


def test_outputs_unchanged_by_the_package_split(workdir, tmp_path):
  out = str(tmp_path / "out")
  text = report.make_report([workdir], out, thresholds=[0.95, 1.0])
  assert text == GOLDEN_MD.format(wd=workdir)
  with open(os.path.join(out, "summary.csv")) as f:
    assert f.read() == GOLDEN_CSV
  assert sorted(os.listdir(out)) == ["curves_00_model.init-simple.png",
                                     "curves_01_model.init-good.png",
                                     "final_test_accuracy.png", "report.md", "summary.csv"]


def test_base_configs_that_differ_are_separate_settings(tmp_path):
  # Same sweep and seeds, 200 epochs and 1 epoch: never one setting with 8 "paired" seeds.
  short = {k: [a - 0.5 if math.isfinite(a) else a for a in v] for k, v in ACC.items()}
  long_wd = write_workdir(str(tmp_path / "long"), base={"num_epochs": 200})
  short_wd = write_workdir(str(tmp_path / "short"), short, base={"num_epochs": 1})
  rep = analyze([long_wd, short_wd])
  assert rep.group_by == ["model.init", "num_epochs"]
  assert [s.label for s in rep.settings] == [
      "model.init=simple, num_epochs=200", "model.init=good, num_epochs=200",
      "model.init=simple, num_epochs=1", "model.init=good, num_epochs=1"]
  assert [(p.pairs, p.dropped) for p in rep.pairs] == [(4, 0), (3, 1)] * 2
  assert pair(rep, "model.init=simple, num_epochs=1", 0.01).mean_diff == pytest.approx(0.045)
  # Grouped more coarsely on request, a noise run still pairs only with the no-noise run of
  # its own num_epochs: (0.95 - 0.90) and (0.45 - 0.40), never 0.95 - 0.40.
  rep = analyze([long_wd, short_wd], group_by=["model.init"])
  assert arm(rep, "model.init=simple", 0.0).runs == 8
  p = pair(rep, "model.init=simple", 0.01)
  assert p.pairs == 8 and p.mean_diff == pytest.approx(0.045)


def test_runs_differing_in_more_than_noise_are_not_paired(tmp_path):
  off = write_workdir(str(tmp_path / "off"), {("simple", 0.0): [0.5, 0.6]}, range(2),
                      base={"num_epochs": 1})
  on = write_workdir(str(tmp_path / "on"), {("simple", 0.01): [0.7, 0.9]}, range(2),
                     base={"num_epochs": 200})
  rep = analyze([off, on], group_by=[])
  assert [a.runs for a in rep.arms] == [2, 2] and rep.pairs == []


def test_runs_differing_only_in_execution_fields_are_one_setting_and_pair(tmp_path):
  # Table 2's case: the no-noise baseline and the noise arm ran as separate work dirs with
  # 100 and 90 runs at once (and diagnostics recorded in one only): same numbers, so one
  # setting, paired by seed.
  off = write_workdir(str(tmp_path / "off"), {("simple", 0.0): [0.5, 0.6]}, range(2),
                      base={"train": {"runs_per_batch": 100}})
  on = write_workdir(str(tmp_path / "on"), {("simple", 0.01): [0.7, 0.9]}, range(2),
                     base={"train": {"runs_per_batch": 90, "diagnostics": True}})
  rep = analyze([off, on])
  assert [s.label for s in rep.settings] == ["model.init=simple"]
  assert [(p.pairs, p.mean_diff) for p in rep.pairs] == [(2, pytest.approx(0.25))]
  # Asked for, an execution field still groups.
  assert len(analyze([off, on], group_by=["train.runs_per_batch"]).settings) == 2


def test_noise_runs_pair_with_the_baseline_of_their_own_workdir(tmp_path):
  # Both work dirs' no-noise runs differ from a noise.std run in noise fields only; the
  # constant sweep's own baseline is its partner.
  rep = analyze([write_workdir(str(tmp_path / "annealed")),
                 constant_workdir(str(tmp_path / "constant"))])
  std = pair(rep, "model.init=simple", 0.001)
  assert std.pairs == 4
  assert std.mean_diff == pytest.approx(statistics.mean(ACC_STD[("simple", 0.001)])
                                        - statistics.mean(ACC_STD[("simple", 0.0)]))


def memnet_workdir(path, experiment="memnet"):
  """A work dir written by the memnet experiment: errors, no accuracy curve."""
  wd = write_workdir(path, base={"experiment": experiment},
                     metrics=lambda run_id, level, step: {"test_error": 0.5 / step,
                                                          "valid_error": 0.4 / step})
  return wd


def curves_plotted(monkeypatch):
  """Records the curves make_report asks plots.plot_curves for."""
  from gradnoise.report import plots
  seen = []
  monkeypatch.setattr(plots, "plot_curves",
                      lambda report, out, curves: seen.append(list(curves)) or [])
  return seen


def test_defaults_come_from_the_experiment(tmp_path, monkeypatch, capsys):
  wd = memnet_workdir(str(tmp_path / "wd"))
  seen = curves_plotted(monkeypatch)
  text = report.make_report([wd], str(tmp_path / "out"))
  assert text.startswith("# Gradient noise: test_error\n")  # memnet's summary metric
  assert "test_error: lower is better" in text
  assert seen == [["train_loss", "valid_error", "test_error"]]  # memnet's, where logged
  assert "warning" not in capsys.readouterr().err


def test_curves_follow_the_metric(tmp_path, monkeypatch):
  # No experiment named: the fallback curves and --metric, where logged.
  wd = write_workdir(str(tmp_path / "wd"),
                     metrics=lambda run_id, level, step: {"test_error": 0.5 / step})
  seen = curves_plotted(monkeypatch)
  report.make_report([wd], str(tmp_path / "out"), "test_error")
  assert seen == [["train_loss", "test_accuracy", "test_error"]]


def test_experiment_that_cannot_be_loaded_falls_back_with_one_warning(tmp_path, capsys):
  wd = memnet_workdir(str(tmp_path / "wd"), experiment="no_such_experiment_module")
  text = report.make_report([wd], str(tmp_path / "out"), plots=False)
  assert text.startswith("# Gradient noise: test_accuracy\n")
  (line,) = capsys.readouterr().err.strip().splitlines()
  assert line.startswith("warning: experiment 'no_such_experiment_module' cannot be loaded")
  assert line.endswith("defaults: --metric=test_accuracy --curves=train_loss,test_accuracy.")


def test_cli_on_a_memnet_workdir_needs_no_metric_flag(tmp_path):
  wd = memnet_workdir(str(tmp_path / "wd"))
  result = run_cli(wd, f"--out={tmp_path / 'out'}", "--noplots")
  assert result.returncode == 0, result.stderr
  assert "## Final test_error" in result.stdout


def diagnostics(run_id, level, step):
  """metrics.jsonl diagnostics of a run: noise norm 100·level, gradient norm 10/epoch."""
  grad, noise = 10.0 / (step // 100), 100 * level
  return {"train_grad_norm": grad, "train_grad_norm_max": 2 * grad,
          "train_clipped_grad_norm": min(grad, 5.0), "train_clipped_fraction": 0.5,
          "train_noise_norm": noise, "train_noise_norm_max": 2 * noise,
          "train_noise_to_grad": noise / grad, "train_noise_to_grad_max": 3 * noise / grad}


@pytest.mark.parametrize("metrics, panels", [
    (diagnostics, 5),
    (lambda run_id, level, step: {"train_clipped_fraction": 0.25}, 1),
])
def test_diagnostics_plots(tmp_path, metrics, panels):
  wd = write_workdir(str(tmp_path / "wd"), metrics=metrics)
  out = str(tmp_path / "out")
  text = report.make_report([wd], out)
  names = ["diagnostics_00_model.init-simple.png", "diagnostics_01_model.init-good.png"]
  assert sorted(f for f in os.listdir(out) if f.startswith("diagnostics")) == names
  assert "No noise diagnostics" not in text
  for name in names:
    assert f"![{name}]({name})" in text
    with open(os.path.join(out, name), "rb") as f:
      data = f.read()
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and 1024 < len(data) < 250_000
  from matplotlib import image
  height = image.imread(os.path.join(out, names[0])).shape[0]
  assert height == 350 * math.ceil(panels / 2)  # 3.5 in per row of two panels, 100 dpi


def test_results_csv_written_and_read_through_one_format(tmp_path):
  import ml_collections
  from gradnoise import results_format, workdir as workdir_lib
  wd = workdir_lib.WorkDir(str(tmp_path))
  runs = [ml_collections.ConfigDict({"model": {"init": i}, "noise": {"eta": e}, "seed": s})
          for i, e, s in (("simple", 0.0, 0), ("simple", 0.01, 0))]
  results = {0: {"test_error": 0.5, "train_loss": 0.25, "diverged": False},
             1: {"test_error": NAN, "train_loss": 0.125, "diverged": True}}
  wd.write_results(["model.init", "noise.eta", "seed"], runs, results)
  with open(tmp_path / results_format.RESULTS_FILE) as f:
    header = f.readline().strip().split(",")
  assert header == results_format.results_columns(["model.init", "noise.eta"],
                                                  ["train_loss", "test_error"])
  assert header == ["run", "model.init", "noise.eta", "seed", "train_loss", "test_error",
                    "diverged"]
  read = wd.read_results()
  assert read[0] == results[0] and read[1]["diverged"] and math.isnan(read[1]["test_error"])
  data = report.load_runs([str(tmp_path)])
  assert data.metrics == ["train_loss", "test_error"]
  assert [(r.overrides, r.seed, r.final["train_loss"], r.diverged) for r in data.runs] == [
      ({"model.init": "simple", "noise.eta": 0.0}, 0, 0.25, False),
      ({"model.init": "simple", "noise.eta": 0.01}, 0, 0.125, True)]
