"""Evaluators and selection: metrics against a hand-computed confusion matrix, selection
that never reads the test set, eval reproducing the logged numbers exactly."""

import functools
import os

import jax
import numpy as np
import optax
import pytest

from cnn_jax import evaluators, metrics, models, run, train
from cnn_jax.data import preprocess
from cnn_jax.errors import ConfigError


def test_metrics_match_a_hand_computed_confusion_matrix():
  model = models.build_model("seed_cnn", num_classes=10)
  state = train.create_train_state(model, jax.random.key(3), (28, 28, 1), optax.adam(1e-3))
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (40, 28, 28, 1), np.uint8)
  labels = rng.integers(0, 10, 40).astype(np.int32)
  index = np.arange(48).reshape(3, 16) % 40  # 40 examples, 8 padded entries masked out.
  mask = np.arange(48).reshape(3, 16) < 40
  sums = jax.jit(functools.partial(train.evaluate, preprocess=preprocess.scale_to_unit,
                                   top_k=3))(
      state, {"image": images, "label": labels}, index, mask)
  logits = np.asarray(model.apply({"params": state.params},
                                  preprocess.scale_to_unit(images), train=False))
  predicted = logits.argmax(-1)
  confusion = np.zeros((10, 10), int)
  for t, p in zip(labels, predicted):
    confusion[t, p] += 1
  scalars, details = metrics.eval_summary(sums, "test", evaluators.METRICS, 3,
                                          [str(i) for i in range(10)])
  assert details["confusion"] == confusion.tolist() and details["count"] == 40
  assert scalars["test_accuracy"] == pytest.approx(np.mean(predicted == labels))
  top3 = np.argsort(-logits, axis=-1)[:, :3]
  assert scalars["test_top3_accuracy"] == pytest.approx(
      np.mean([l in t for l, t in zip(labels, top3)]))
  for c in range(10):
    tp, fp, fn = confusion[c, c], confusion[:, c].sum() - confusion[c, c], (
        confusion[c].sum() - confusion[c, c])
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    assert details["per_class"]["precision"][c] == pytest.approx(precision)
    assert details["per_class"]["recall"][c] == pytest.approx(recall)
    assert details["per_class"]["f1"][c] == pytest.approx(f1)
  assert scalars["test_macro_f1"] == pytest.approx(np.mean(details["per_class"]["f1"]))


EVALS = {"validation": {"split": "validation"}, "test": {"split": "test"}}


def test_selection_on_the_test_split_is_refused():
  evs = evaluators.from_config(EVALS, ["train", "validation", "test"])
  evaluators.check_selection("validation_accuracy", evs)
  evaluators.check_selection("", evs)  # Latest checkpoints only.
  with pytest.raises(ConfigError, match="selects checkpoints on the test split"):
    evaluators.check_selection("test_accuracy", evs)
  # Whatever the evaluator is called: it is the split that counts.
  sneaky = evaluators.from_config({"holdout": {"split": "test"}}, ["train", "test"])
  with pytest.raises(ConfigError, match="on the test split .evaluator 'holdout'"):
    evaluators.check_selection("holdout_loss", sneaky)
  with pytest.raises(ConfigError, match="selectable: validation_loss, validation_acc"):
    evaluators.check_selection("validation_f1", evs)


def test_evaluator_config_errors():
  with pytest.raises(Exception, match="is not a split of this run"):
    evaluators.from_config(EVALS, ["train", "test"])
  with pytest.raises(ConfigError, match="unknown .'auc'."):
    evaluators.from_config({"test": {"split": "test", "metrics": ("auc",)}}, ["test"])
  with pytest.raises(ConfigError, match="every_epochs=0"):
    evaluators.from_config({"test": {"split": "test", "every_epochs": 0}}, ["test"])
  # A validation split no evaluator reads gets one, every epoch.
  evs = evaluators.from_config({"test": {"split": "test"}}, ["train", "validation", "test"])
  assert [e.name for e in evs] == ["validation", "test"]
  assert evs[0].due(1, 5) and evaluators.Evaluator("t", "test", 2).due(5, 5)


def test_a_config_that_selects_on_test_fails_before_any_work(seed_config, tmp_path):
  seed_config.best_metric = "test_accuracy"
  seed_config.keep_best_checkpoints = 1
  with pytest.raises(ConfigError, match="test split"):
    run.train_and_evaluate(seed_config, str(tmp_path / "run"))
  assert not os.path.exists(tmp_path / "run" / "checkpoints")


def test_the_run_selects_on_validation_and_eval_reproduces_the_log(trained_run):
  _, workdir, records = trained_run
  assert [r["step"] for r in records] == [56, 112]  # 1,800 train examples, batch 32.
  best = max(records, key=lambda r: r["validation_accuracy"])
  evaluated = run.evaluate_checkpoint(workdir, "best")
  assert evaluated["step"] == best["step"]
  for key, value in evaluated.items():  # Exactly the numbers logged for that step.
    assert value == best[key], key
  assert set(evaluated) >= {"validation_accuracy", "validation_top5_accuracy",
                            "validation_macro_f1", "test_accuracy", "test_loss"}
