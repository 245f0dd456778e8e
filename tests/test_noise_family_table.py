"""experiments/noise_family_table.py on a handwritten work dir."""

import csv
import json

from experiments import noise_family_table

COLUMNS = ["run", "noise.kind", "noise.eta", "noise.sigma", "seed", "test_accuracy",
           "best_test_accuracy", "train_noise_to_grad", "train_clipped_fraction", "diverged"]


def write_workdir(path, rows):
  with open(path / "results.csv", "w", newline="") as f:
    writer = csv.writer(f)
    writer.writerow(COLUMNS)
    writer.writerows(rows)
  with open(path / "metrics.jsonl", "w") as f:
    for row in rows:
      for epoch in (1, 2):
        f.write(json.dumps({"run": row[0], "epoch": epoch, "test_accuracy": 0.1 * epoch,
                            "train_noise_to_grad": 2.0 * epoch}) + "\n")


def test_arms_and_their_statistics(tmp_path):
  write_workdir(tmp_path, [
      [0, "gaussian", 0.0, 0.0, 0, 0.1, 0.2, 0.0, 0.0, "False"],
      [1, "gaussian", 0.0, 0.0, 1, 0.3, 0.4, 0.0, 0.5, "False"],
      [2, "weight", 0.01, 0.1, 0, 0.6, 0.9, 3.0, 0.0, "False"],
      [3, "weight", 0.01, 0.1, 1, 0.8, 0.8, 5.0, 1.0, "True"],
  ])
  arms, by_run = noise_family_table.load(str(tmp_path))
  assert list(arms) == [("none", "", 0.0), ("weight", "sigma", 0.1)]  # weight ignores eta
  lines = noise_family_table.table(arms).splitlines()
  assert lines[2] == "| none | - | 20.0% (10.0%-30.0%) | 30.0% | 0/2 | 0 | 0.25 | 0 |"
  assert lines[3] == "| weight | sigma = 0.1 | 70.0% (60.0%-80.0%) | 85.0% | 2/2 | 4 | 0.50 | 1 |"
  noise_family_table.figure(arms, by_run, str(tmp_path / "family.png"))
  assert (tmp_path / "family.png").stat().st_size > 0


def test_a_folder_without_results_is_one_error(tmp_path, capsys):
  assert noise_family_table.main(["noise_family_table", str(tmp_path)]) == 2
  assert "results.csv: no such file" in capsys.readouterr().err
