"""Time to accuracy (`./run.sh speedrun`): the split of a run's time, the command, its
refusals, flip test-time augmentation and the runner's timing records."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from cnn_jax import evaluators, speedrun, train
from cnn_jax.errors import ConfigError


def test_phases_split_the_time_from_process_start():
  records = [
      {"train_time_sec": 10.0, "train_compile_sec": 3.0, "eval_time_sec": 0.0,
       "eval_compile_sec": 0.0, "time_unix": 1014.0},
      {"train_time_sec": 8.0, "train_compile_sec": 0.5, "eval_time_sec": 2.0,
       "eval_compile_sec": 1.0, "time_unix": 1025.0}]
  p = speedrun.phases(records, spawned_unix=1000.0)
  assert p == {"seconds": 25.0, "startup_sec": 5.0, "compile_sec": 4.5,
               "train_sec": 14.5, "eval_sec": 1.0}
  assert sum(p[k] for k in speedrun.PHASES) == p["seconds"]


def test_mean_std_is_the_sample_standard_deviation():
  assert speedrun.mean_std([1.0, 2.0, 3.0]) == (2.0, 1.0)
  assert speedrun.mean_std([0.5]) == (0.5, 0.0)


@pytest.mark.parametrize("text", [["0"], ["4", "4"], ["four"], ["-2"]])
def test_bad_epochs_are_refused(text):
  with pytest.raises(ConfigError, match="--epochs"):
    speedrun.parse_epochs(text)
  assert speedrun.parse_epochs(["6", "4"]) == [6, 4]


def test_a_recipe_without_one_test_result_is_refused():
  from experiments import speedrun_fashion_mnist
  config = speedrun_fashion_mnist.get_config()
  speedrun.check(config, 5)
  with pytest.raises(ConfigError, match="at least one seed"):
    speedrun.check(config, 0)
  config.ema_decay = 0.99
  with pytest.raises(ConfigError, match="ema=True"):
    speedrun.check(config, 5)
  config.evals = dict(validation=dict(split="validation"))
  with pytest.raises(ConfigError, match="evaluator named 'test'"):
    speedrun.check(config, 5)


class _Asymmetric:
  """A model whose logits tell a left-right mirror image apart: the mean of each row's
  left half, and of its right half, for 2 classes."""

  @staticmethod
  def apply(variables, x, train=False):
    del train
    w = x.shape[2] // 2
    return jnp.stack([x[:, :, :w].mean((1, 2, 3)), x[:, :, w:].mean((1, 2, 3))],
                     -1) * variables["params"]["scale"]


def test_flip_tta_averages_the_logits_of_each_image_and_its_mirror_image():
  state = train.TrainState.create(apply_fn=_Asymmetric.apply,
                                  params={"scale": jnp.float32(3.0)}, tx=optax.sgd(0.1))
  images = jax.random.uniform(jax.random.key(0), (6, 4, 4, 1))
  labels = jnp.array([0, 1, 0, 1, 0, 1])
  batch = {"image": images, "label": labels, "mask": jnp.ones(6, bool)}
  plain = train.eval_step(state, batch)
  flipped = train.eval_step(state, {**batch, "image": images[:, :, ::-1]})
  both = train.eval_step(state, batch, tta="flip")
  # The two halves' means averaged with their mirror: equal logits, a tie every time
  # (argmax: class 0), and the loss of the averaged logits, log 2 exactly.
  assert float(both["correct"]) == 3.0
  np.testing.assert_allclose(float(both["loss"]), 6 * np.log(2), rtol=1e-6)
  assert float(plain["loss"]) != float(flipped["loss"])


def test_an_unknown_test_time_augmentation_is_refused():
  with pytest.raises(ConfigError, match=r"tta='rotate'.*none, flip"):
    evaluators.from_config({"test": {"split": "test", "tta": "rotate"}}, ["train", "test"])
  [ev] = evaluators.from_config({"test": {"split": "test", "tta": "flip"}},
                                ["train", "test"])
  assert ev.tta == "flip"


@pytest.mark.slow
def test_epoch_records_split_the_time_and_count_compilation_once(seed_config, tmp_path):
  from cnn_jax import report, run
  seed_config.num_epochs = 2
  run.train_and_evaluate(seed_config, str(tmp_path))
  first, second = report.read_metrics(str(tmp_path))
  assert set(run.TIMING_KEYS) <= set(first)  # What differs from run to run, named.
  for r in (first, second):
    assert r["epoch_time_sec"] == pytest.approx(r["train_time_sec"] + r["eval_time_sec"])
    assert r["time_unix"] > 0
  # Every program is made in the first epoch (its chunks and the evaluation); the
  # second makes none.
  assert 0 < first["train_compile_sec"] < first["train_time_sec"]
  assert 0 < first["eval_compile_sec"] < first["eval_time_sec"]
  assert second["train_compile_sec"] == 0 and second["eval_compile_sec"] == 0
  assert second["time_unix"] > first["time_unix"]


@pytest.mark.slow
def test_speedrun_command_times_each_seed_in_its_own_process(cli, data_dir, tmp_path):
  out = cli("speedrun", "--seeds", "2", "--epochs", "2,1", "--workdir", str(tmp_path),
            "--config.dataset=mnist_5k", f"--config.data_dir={data_dir}",
            "--config.flip=False")
  assert out.returncode == 0, out.stderr[-3000:]
  [folder] = os.listdir(tmp_path)
  folder = tmp_path / folder
  result = json.loads((folder / "speedrun.json").read_text())
  assert [(r["epochs"], r["seed"]) for r in result["runs"]] == [(2, 0), (2, 1), (1, 0),
                                                                (1, 1)]
  for r in result["runs"]:
    # Its own run, trained for its own length: the accuracy its last record holds.
    records = [json.loads(l) for l in open(os.path.join(r["workdir"], "metrics.jsonl"))]
    assert len(records) == r["epochs"] and r["test_accuracy"] == records[-1][
        "test_accuracy"] > 0.5
    config = json.load(open(os.path.join(r["workdir"], "config.json")))
    assert (config["seed"], config["num_epochs"], config["dataset"]) == (
        r["seed"], r["epochs"], "mnist_5k")
    assert sum(r[k] for k in speedrun.PHASES) == pytest.approx(r["seconds"])
    assert 0 < r["seconds"] < r["exit_sec"] and min(r[k] for k in speedrun.PHASES) >= 0
  # The two seeds differ; each length's mean is over its own seeds.
  runs = result["runs"]
  assert runs[0]["test_accuracy"] != runs[1]["test_accuracy"] or (
      runs[0]["train_sec"] != runs[1]["train_sec"])
  mean = result["summaries"]["2"]["test_accuracy"]["mean"]
  assert mean == pytest.approx((runs[0]["test_accuracy"] + runs[1]["test_accuracy"]) / 2)
  table = (folder / "speedrun.md").read_text().splitlines()
  assert [row.split("|")[1].strip() for row in table[2:]] == ["1", "2"]
  assert (folder / "speedrun.png").stat().st_size > 10_000
  assert "[2 epochs seed1] test accuracy" in out.stdout
  assert "2 epochs, 2 seed(s): test accuracy" in out.stdout


@pytest.mark.parametrize("args, message", [
    (["--epochs", "0"], "--epochs 0: give distinct whole numbers"),
    (["--seeds", "0"], "at least one seed"),
    (["--config.ema_decay=0.99"], "set config.evals.test.ema=True"),
    (["--config.num_epoch=3"], "the config has no field 'num_epoch'"),
])
def test_speedrun_refuses_bad_input_before_any_work(cli, data_dir, tmp_path, args,
                                                   message):
  out = cli("speedrun", "--workdir", str(tmp_path / "runs"), "--config.dataset=mnist_5k",
            f"--config.data_dir={data_dir}", *args)
  assert out.returncode == 2 and message in out.stderr, out.stderr[-2000:]
  assert len(out.stderr.strip().splitlines()) == 1
  assert not (tmp_path / "runs").exists()
