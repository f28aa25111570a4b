"""Tests of cnn_jax.data.source: finding, preparing and reading TFDS datasets."""

import time

import numpy as np
import pytest
import tensorflow_datasets as tfds

from cnn_jax import data
from cnn_jax.data import source


@pytest.mark.parametrize("name, shape", [
    ("mnist", (28, 28, 1)),
    ("cifar10", (32, 32, 3)),
])
def test_mocked_dataset_through_source(tmp_path, monkeypatch, name, shape):
  # mock_data leaves is_prepared() False and makes download_and_prepare a no-op:
  # pretend the network is up so get_builder takes the download path.
  monkeypatch.setattr(source, "network_reachable", lambda timeout=3.0: True)
  with tfds.testing.mock_data(num_examples=12,
                              policy=tfds.testing.MockPolicy.USE_CODE):
    builder = source.get_builder(name, str(tmp_path))
    info = source.dataset_info(builder)
    # read_split batches explicitly: batch_size=-1 aborts the process in mock_data.
    images, labels = data.read_split(builder, "train")
  assert info.name == name
  assert info.image_shape == shape
  assert info.num_classes == 10
  assert images.shape == (12, *shape) and images.dtype == np.uint8
  assert labels.shape == (12,) and labels.dtype == np.int32
  assert labels.min() >= 0 and labels.max() < 10


def test_unknown_dataset_lists_offline_datasets(tmp_path):
  with pytest.raises(source.DatasetError, match="Unknown dataset 'no_such_set'") as e:
    source.get_builder("no_such_set", str(tmp_path))
  assert "mnist_5k" in str(e.value)


@pytest.mark.parametrize("name, fix", [
    ("fashion_mnist", "./run.sh prepare fashion_mnist --from DIR --data_dir"),
    ("mnist", "./run.sh prepare mnist --from DIR --data_dir"),
    ("cifar10", "folder:/path/to/root"),
])
def test_not_downloadable_fails_fast(tmp_path, monkeypatch, name, fix):
  monkeypatch.setattr(source, "network_reachable", lambda timeout=3.0: False)
  start = time.perf_counter()
  with pytest.raises(source.DatasetError, match="cannot be downloaded") as e:
    source.get_builder(name, str(tmp_path))
  assert time.perf_counter() - start < 10
  assert fix in str(e.value)
  assert "mnist_5k" in str(e.value)


def test_a_tfrecord_dataset_is_converted_once_to_array_record(tmp_path, capsys):
  from cnn_jax.data.builders import mnist_5k  # pylint: disable=g-import-not-at-top
  mnist_5k.Mnist5k(data_dir=str(tmp_path)).download_and_prepare()  # TFRecord, TFDS's default.
  stale = source.open_prepared("mnist_5k", str(tmp_path))
  assert not source.has_array_record(stale)
  capsys.readouterr()
  builder = source.prepared_builder("mnist_5k", str(tmp_path))
  assert "prepared as TFRecord only; converting it once" in capsys.readouterr().out
  assert source.has_array_record(builder)
  source.prepared_builder("mnist_5k", str(tmp_path))
  assert "converting" not in capsys.readouterr().out
  images, labels = data.read_split(builder, "test")
  assert images.shape == (1000, 28, 28, 1) and np.bincount(labels).tolist() == [100] * 10
