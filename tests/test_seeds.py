"""Several seeds in one program (cnn_jax/seeds.py): each seed a run of its own, equal
to its sequential run to float rounding, resumable, and the sweep's --vmap_seeds."""

import numpy as np
import pytest

from cnn_jax import errors, report, run, seeds, sweep
from cnn_jax.errors import ConfigError
from tests.test_resume import assert_trees_equal, final_params

SEEDS = (3, 5)


def small(config):
  """640 training images, batch 32: 20 steps per epoch, dispatches of 7 steps."""
  config.train_split, config.num_epochs, config.steps_per_dispatch = "train[:640]", 2, 7
  return config


@pytest.fixture(scope="module")
def vmapped(data_dir, tmp_path_factory):
  """(config, workdirs, records) of SEEDS trained in one program for 2 epochs."""
  from experiments import seed_cnn  # pylint: disable=g-import-not-at-top
  config = small(seed_cnn.get_config())
  config.data_dir = data_dir
  base = tmp_path_factory.mktemp("vmapped")
  workdirs = [str(base / f"seed{s}") for s in SEEDS]
  return config, workdirs, seeds.train_seeds(config, list(SEEDS), workdirs)


LEARNING = ("epoch", "step", "train_loss", "train_accuracy", "test_loss",
            "test_accuracy")


def test_each_seed_in_one_program_is_its_sequential_run(vmapped, tmp_path):
  config, workdirs, records = vmapped
  for seed, workdir, record in zip(SEEDS, workdirs, records):
    alone = str(tmp_path / f"seed{seed}")
    assert run.train_and_evaluate(seeds.seed_config(config, seed), alone)["step"] == 40
    assert record["step"] == 40
    assert report.read_json(workdir, report.CONFIG_FILE)["seed"] == seed
    mapped_log, alone_log = report.read_metrics(workdir), report.read_metrics(alone)
    assert len(mapped_log) == 2
    for mapped_record, alone_record in zip(mapped_log, alone_log):
      # Measured: equal to 1e-7 relative here (the mapped program may order its
      # sums differently); 1e-5 leaves room for other CPUs.
      for key in LEARNING:
        assert mapped_record[key] == pytest.approx(alone_record[key], rel=1e-5), key
    (step, mapped_state), (_, alone_state) = final_params(workdir), final_params(alone)
    assert step == 40
    assert_trees_equal(mapped_state, alone_state, exact=False, atol=1e-5)
  # Different seeds: different initial weights and batch orders.
  assert records[0]["train_loss"] != records[1]["train_loss"]


def test_a_stopped_program_resumes_the_seeds_together_exactly(vmapped, tmp_path):
  config, workdirs, _ = vmapped
  resumed = [str(tmp_path / f"seed{s}") for s in SEEDS]
  first = config.copy_and_resolve_references()
  first.num_epochs = 1  # Stops after epoch 1 (constant schedule: the same run).
  seeds.train_seeds(first, list(SEEDS), resumed)
  seeds.train_seeds(config, list(SEEDS), resumed)  # Both resume at step 20, together.
  for done, again in zip(workdirs, resumed):
    assert_trees_equal(final_params(done)[1], final_params(again)[1])
    assert [r["step"] for r in report.read_metrics(again)] == [20, 40]
  # A seed's workdir is a run like any other: `train` goes on from it alone.
  longer = config.copy_and_resolve_references()
  longer.num_epochs = 3
  assert run.train_and_evaluate(seeds.seed_config(longer, SEEDS[1]),
                                resumed[1])["step"] == 60


def test_seeds_at_different_steps_go_on_in_groups(seed_config, tmp_path):
  config = small(seed_config)
  config.train_split = "train[:320]"  # 10 steps per epoch.
  workdirs = [str(tmp_path / f"seed{s}") for s in (0, 1, 2)]
  one_epoch = config.copy_and_resolve_references()
  one_epoch.num_epochs = 1
  seeds.train_seeds(one_epoch, [0], workdirs[:1])  # Seed 0 at step 10, the others new.
  records = seeds.train_seeds(config, [0, 1, 2], workdirs)
  assert [r["step"] for r in records] == [20, 20, 20]
  assert [[r["step"] for r in report.read_metrics(w)] for w in workdirs] == [[10, 20]] * 3


def test_seeds_in_one_program_need_the_data_in_memory(seed_config, tmp_path):
  seed_config.input_pipeline = "streaming"
  with pytest.raises(ConfigError, match="input_pipeline=in_memory"):
    seeds.train_seeds(seed_config, [0, 1], [str(tmp_path / "a"), str(tmp_path / "b")])
  assert not (tmp_path / "a").exists()
  seed_config.input_pipeline, seed_config.in_memory_max_bytes = "auto", 1000
  with pytest.raises(ConfigError, match="is streamed"):
    seeds.train_seeds(seed_config, [0, 1], [str(tmp_path / "a"), str(tmp_path / "b")])
  assert not (tmp_path / "a" / report.METRICS_FILE).exists()


def test_a_sweep_with_vmap_seeds_writes_its_table(seed_config, tmp_path):
  config = small(seed_config)
  config.validation_fraction = 0.2
  config.best_metric, config.keep_best_checkpoints = "validation_accuracy", 1
  rows = sweep.sweep(config, str(tmp_path), {}, seeds=3, vmap_seeds=True)
  values = rows[0]["validation_accuracy"]["values"]
  assert len(values) == 3 and len(set(values)) > 1
  assert rows[0]["validation_accuracy"]["std"] == pytest.approx(np.std(values, ddof=1))
  table = (tmp_path / "sweep.md").read_text()
  assert "| base (chosen) | 3 |" in table and "±" in table
  logs = [report.read_metrics(str(tmp_path / "base" / f"seed{k}")) for k in range(3)]
  assert [len(log) for log in logs] == [2, 2, 2]


def test_a_diverging_seed_stops_the_program_naming_its_run(seed_config, tmp_path):
  config = small(seed_config)
  config.train_split, config.learning_rate, config.divergence_factor = (
      "train[:320]", 10.0, 1.5)
  workdirs = [str(tmp_path / f"seed{s}") for s in (0, 1)]
  with pytest.raises(errors.DivergenceError, match=r"seed\d: Training diverged in epoch"):
    seeds.train_seeds(config, [0, 1], workdirs)
