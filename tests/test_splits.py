"""Tests of cnn_jax.data.splits: named splits from specs, and the validation hold-out."""

import collections

import numpy as np
import pytest

from cnn_jax import data
from cnn_jax.data import splits


def test_holdout_is_stratified_deterministic_and_seed_free():
  labels = np.repeat(np.arange(4), [100, 50, 10, 1])
  held = splits.holdout_mask(labels, 0.1)
  assert collections.Counter(labels[held].tolist()) == {0: 10, 1: 5, 2: 1}
  np.testing.assert_array_equal(held, splits.holdout_mask(labels, 0.1))
  # Chosen at random within each class, not the first or last examples.
  assert 0 < np.nonzero(held[:100])[0].mean() < 99 and not held[:10].all()


@pytest.fixture
def named(seed_config):
  seed_config.validation_fraction = 0.1
  return seed_config, data.open_splits(seed_config)


def test_validation_fraction_holds_out_part_of_train(named):
  config, (info, parts) = named
  assert info.splits == {"train": 3600, "test": 1000, "validation": 400}
  train, val = parts["train"].read(np.arange(3600)), parts["validation"].read(
      np.arange(400))
  assert collections.Counter(val[1].tolist()) == {c: 40 for c in range(10)}
  whole = data.read_split(data.source.prepared_builder("mnist_5k", config.data_dir))
  key = lambda images, labels: collections.Counter(
      (x.tobytes(), int(y)) for x, y in zip(images, labels))
  # Disjoint, and together the whole training split.
  assert key(*train) + key(*val) == key(*whole)


def test_validation_split_by_spec_and_conflicts(seed_config):
  seed_config.validation_split = "train[:500]"
  seed_config.train_split = "train[500:]"
  info, _ = data.open_splits(seed_config)
  assert info.splits == {"train": 3500, "test": 1000, "validation": 500}
  seed_config.validation_fraction = 0.1
  with pytest.raises(data.DatasetError, match="both ask for a validation split"):
    data.open_splits(seed_config)
  seed_config.validation_split = ""
  seed_config.validation_fraction = 1.5
  with pytest.raises(data.DatasetError, match=r"must be in \[0, 1\)"):
    data.open_splits(seed_config)


@pytest.mark.parametrize("spec, message", [
    ("nosuch", "Unknown split 'nosuch'"),
    ("train[:10", "Unrecognized split format"),
    ("train[100:50]", "has no examples"),
])
def test_bad_split_specs_are_clear_errors(seed_config, spec, message):
  seed_config.train_split = spec
  with pytest.raises(data.DatasetError, match=message):
    data.open_splits(seed_config)


def test_specs_read_as_tfds_does(seed_config):
  builder = data.source.prepared_builder("mnist_5k", seed_config.data_dir)
  images, labels = data.read_split(builder, "train[:10]+test[-5:]")
  first, _ = data.read_split(builder, "train")
  test, test_labels = data.read_split(builder, "test")
  np.testing.assert_array_equal(images[:10], first[:10])
  np.testing.assert_array_equal(images[10:], test[-5:])
  np.testing.assert_array_equal(labels[10:], test_labels[-5:])
  assert len(data.read_split(builder, "train[:10%]")[1]) == 400


def test_the_validation_split_is_evaluated_and_recorded(named, tmp_path):
  from cnn_jax import run  # pylint: disable=g-import-not-at-top
  config, _ = named
  record = run.train_and_evaluate(config, str(tmp_path / "run"))
  assert record["step"] == 3600 // 32
  assert 0.8 < record["validation_accuracy"] <= 1 and record["test_accuracy"] > 0.8


@pytest.mark.parametrize("train, validation, other", [
    ("train", "test[:100]", "test"),
    ("train", "train[:10%]", "train"),
])
def test_a_validation_split_that_overlaps_train_or_test_is_refused(seed_config, train,
                                                                   validation, other):
  seed_config.train_split, seed_config.validation_split = train, validation
  with pytest.raises(data.DatasetError, match=f"shares .* examples with the {other} split"):
    data.open_splits(seed_config)
