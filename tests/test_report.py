"""gradnoise.report on synthetic work dirs with hand-chosen numbers."""

import ast
import csv
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


def write_workdir(path, acc=ACC, seeds=range(4), finished=None, partial_line=True):
  """A work dir of the sweep init x eta x seeds; results for the first ``finished`` runs."""
  seeds = list(seeds)
  inits = list(dict.fromkeys(k[0] for k in acc))
  etas = sorted({k[1] for k in acc})
  sweep = [{"model.init": i, "noise.eta": e, "seed": s}
           for i in inits for e in etas for s in seeds]
  config = {"model": {"init": "simple", "depth": 20}, "noise": {"eta": 0.0, "gamma": 0.55},
            "optimizer": {"learning_rate": 0.1}, "seed": 0}
  os.makedirs(path, exist_ok=True)
  with open(os.path.join(path, "config.json"), "w") as f:
    json.dump({"config": config, "sweep": sweep}, f)
  finished = len(sweep) if finished is None else finished
  if finished:
    with open(os.path.join(path, "results.csv"), "w", newline="") as f:
      writer = csv.writer(f, lineterminator="\n")
      writer.writerow(["run", "model.init", "noise.eta", "seed", "test_accuracy",
                       "best_test_accuracy", "train_loss", "test_error", "diverged"])
      for run_id, o in enumerate(sweep[:finished]):
        a = acc[(o["model.init"], o["noise.eta"])][seeds.index(o["seed"])]
        writer.writerow([fmt(v) for v in (run_id, o["model.init"], o["noise.eta"], o["seed"],
                                           a, a, 0.01 * (run_id + 1), 1 - a,
                                           not math.isfinite(a))])
  with open(os.path.join(path, "metrics.jsonl"), "w") as f:
    for step in STEPS:
      for run_id, o in enumerate(sweep):
        a = acc[(o["model.init"], o["noise.eta"])][seeds.index(o["seed"])]
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
    assert a.arm.label == ("no noise" if eta == 0 else "noise.eta=0.01")
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
  assert [a.arm.label for a in rep.arms] == ["no noise", "noise.eta=0.01", "noise.eta=0.3"]
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
  assert "| model.init=good | noise.eta=0.01 | 4 | 1 | 1 | 1 | 0.9967 |" in text
  assert "| setting | threshold | no noise | noise.eta=0.01 |" in text
  assert "| model.init=simple | test_accuracy >= 1 | 0/4 | 1/4 |" in text
  assert "| model.init=simple | noise.eta=0.01 | 4 | 0.045 |" in text
  with open(os.path.join(out, "summary.csv")) as f:
    rows = list(csv.DictReader(f))
  assert [(r["model.init"], r["noise"], r["runs"], r["runs_ge_1"]) for r in rows] == [
      ("simple", "0.0", "4", "0"), ("simple", "0.01", "4", "1"), ("good", "0.0", "4", "2"),
      ("good", "0.01", "4", "2")]
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
