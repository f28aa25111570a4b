"""Seeds and sweeps: a grid of settings times seeds, resumable, chosen on validation,
reported with mean and spread."""

import os

import numpy as np
import pytest

from cnn_jax import report, sweep
from cnn_jax.errors import ConfigError


def test_grid_parsing_and_product(seed_config):
  grid = sweep.parse_grid(["learning_rate=1e-3,3e-4", "flip=true,false"], seed_config)
  assert grid == {"learning_rate": [1e-3, 3e-4], "flip": [True, False]}
  assert len(sweep.settings(grid)) == 4 and sweep.settings({}) == [{}]
  with pytest.raises(ConfigError, match="expected FIELD=V1,V2"):
    sweep.parse_grid(["learning_rat=1"], seed_config)
  with pytest.raises(ConfigError, match="could not convert"):
    sweep.parse_grid(["learning_rate=fast"], seed_config)
  # A value or a field given twice: one run and two rows, or the last flag silently.
  with pytest.raises(ConfigError, match="lists 0.001 more than once"):
    sweep.parse_grid(["learning_rate=1e-3,0.001"], seed_config)
  with pytest.raises(ConfigError, match="learning_rate= is given twice; list its values "
                                        "in one"):
    sweep.parse_grid(["learning_rate=1e-3", "learning_rate=3e-4"], seed_config)


def test_every_setting_is_checked_before_any_trains(seed_config, tmp_path):
  """A bad value in a later setting was refused only after the earlier ones trained."""
  seed_config.validation_fraction = 0.2
  seed_config.best_metric, seed_config.keep_best_checkpoints = "validation_accuracy", 1
  with pytest.raises(ConfigError, match="setting batch_size=0 of the sweep: "
                                        "config.batch_size=0 is not allowed"):
    sweep.sweep(seed_config, str(tmp_path / "sweep"), {"batch_size": [32, 0]}, seeds=1)
  assert not (tmp_path / "sweep").exists()


def test_a_sweep_runs_each_setting_and_seed_once_and_chooses_on_validation(seed_config,
                                                                          tmp_path,
                                                                          capsys):
  seed_config.train_split, seed_config.num_epochs = "train[:800]", 2
  seed_config.validation_fraction = 0.2
  seed_config.best_metric, seed_config.keep_best_checkpoints = "validation_accuracy", 1
  grid = {"learning_rate": [1e-3, 3e-3]}
  rows = sweep.sweep(seed_config, str(tmp_path), grid, seeds=2)
  assert [r["setting"] for r in rows] == [{"learning_rate": 1e-3}, {"learning_rate": 3e-3}]
  # Issue 29, item 12: each epoch line says which setting and seed it is.
  epochs = [l.split("epoch")[0] for l in capsys.readouterr().out.splitlines()
            if "  step " in l]
  assert epochs == [f"[learning_rate={lr} seed{k}] " for lr in (0.001, 0.003)
                    for k in (0, 1) for _ in range(2)]
  for row in rows:
    values = row["validation_accuracy"]["values"]
    assert len(values) == 2 and row["validation_accuracy"]["mean"] == pytest.approx(
        np.mean(values))
    assert row["validation_accuracy"]["std"] == pytest.approx(np.std(values, ddof=1))
    assert "test_accuracy" in row
  chosen = [r for r in rows if r["chosen"]]
  assert chosen == [max(rows, key=lambda r: r["validation_accuracy"]["mean"])]
  table = (tmp_path / "sweep.md").read_text()
  assert "(chosen)" in table and "±" in table
  run_dir = tmp_path / "learning_rate=0.001" / "seed1"
  before = os.stat(run_dir / report.METRICS_FILE).st_mtime_ns
  sweep.sweep(seed_config, str(tmp_path), grid, seeds=2)  # Finished runs are not redone.
  assert os.stat(run_dir / report.METRICS_FILE).st_mtime_ns == before
  seeds = {r["seed"] for r in [report.read_json(str(tmp_path / "learning_rate=0.001" / s),
                                                "config.json") for s in ("seed0", "seed1")]}
  assert seeds == {0, 1}

  # --report_only trains nothing: an unrun setting is left out, an unfinished run is
  # marked and its setting never chosen.
  metrics = tmp_path / "learning_rate=0.003" / "seed1" / report.METRICS_FILE
  metrics.write_text(metrics.read_text().splitlines()[0] + "\n")
  grid_more = {"learning_rate": [1e-3, 3e-3, 1e-2]}
  rows = sweep.sweep(seed_config, str(tmp_path), grid_more, seeds=2, train=False)
  assert not (tmp_path / "learning_rate=0.01").exists()
  assert [r["setting"]["learning_rate"] for r in rows] == [1e-3, 3e-3]
  assert [r["finished"] for r in rows] == [True, False] and rows[0]["chosen"]
  assert "learning_rate=0.003 (unfinished: epochs 2/1 of 2)" in (
      tmp_path / "sweep.md").read_text()
  rows = sweep.sweep(seed_config, str(tmp_path), grid, seeds=3, train=False)
  assert [r["finished"] for r in rows] == [False, False]  # Seed 2 never started.
  assert not any(r["chosen"] for r in rows) and rows[0]["seeds"] == 2
  assert "learning_rate=0.001 (unfinished: epochs 2/2/0 of 2)" in (
      tmp_path / "sweep.md").read_text()


def test_a_sweep_needs_a_validation_metric(seed_config, tmp_path):
  with pytest.raises(ConfigError, match="chooses on a validation metric"):
    sweep.sweep(seed_config, str(tmp_path), {}, seeds=1)
