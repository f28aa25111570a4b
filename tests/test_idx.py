"""Tests of cnn_jax.data.builders.idx: genuine mnist/fashion_mnist from IDX files."""

import gzip
import os
import struct
import time

import numpy as np
import pytest
import tensorflow_datasets as tfds
from tensorflow_datasets.image_classification import mnist as tfds_mnist

from cnn_jax.data import cache, source
from cnn_jax.data.builders import idx
from cnn_jax.prepare import prepare_command

DEBIAN_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_NAMES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal",
                 "Shirt", "Sneaker", "Bag", "Ankle boot"]


def write_idx(path, array, magic):
  header = struct.pack(f">{1 + array.ndim}I", magic, *array.shape)
  with gzip.open(path, "wb") as f:
    f.write(header + array.astype(np.uint8).tobytes())


def write_fixture(directory, n_train=60, n_test=20, seed=0):
  """Writes the four gzipped IDX files; returns {split: (images, labels)}."""
  rng = np.random.default_rng(seed)
  data = {}
  for split, n in (("train", n_train), ("test", n_test)):
    images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, n, dtype=np.uint8)
    write_idx(os.path.join(directory, idx.FILES[f"{split}_data"]), images,
              idx.IMAGES_MAGIC)
    write_idx(os.path.join(directory, idx.FILES[f"{split}_labels"]), labels,
              idx.LABELS_MAGIC)
    data[split] = (images, labels)
  return data


def prepared_files(data_dir):
  """Every dataset_info.json under data_dir: a prepared (or half-prepared) dataset."""
  return [os.path.join(d, f) for d, _, files in os.walk(data_dir) for f in files
          if f == "dataset_info.json"]


def as_sorted_pairs(images, labels):
  pairs = sorted((img.tobytes(), int(label)) for img, label in zip(images, labels))
  return pairs


@pytest.fixture(autouse=True)
def _quiet():
  tfds.disable_progress_bar()


@pytest.fixture
def idx_dir(tmp_path):
  directory = tmp_path / "idx"
  directory.mkdir()
  return str(directory)


@pytest.mark.parametrize("name, stock_class, label_names", [
    ("fashion_mnist", tfds_mnist.FashionMNIST, FASHION_NAMES),
    ("mnist", tfds_mnist.MNIST, [str(i) for i in range(10)]),
])
def test_prepare_round_trip_with_stock_builder(tmp_path, idx_dir, name, stock_class,
                                               label_names):
  data = write_fixture(idx_dir)
  data_dir = str(tmp_path / "tfds")
  idx.prepare(name, idx_dir, data_dir)

  builder = tfds.builder(name, data_dir=data_dir)
  assert type(builder) is stock_class  # pylint: disable=unidiomatic-typecheck
  assert builder.is_prepared()
  assert str(builder.version) == str(stock_class.VERSION)
  assert builder.info.features["image"].shape == (28, 28, 1)
  assert builder.info.features["label"].names == label_names
  for split, (images, labels) in data.items():
    # Prepared in ArrayRecord: a plain TFDS data source reads it.
    loaded = list(tfds.data_source(name, data_dir=data_dir, split=split))
    loaded_images = np.stack([x["image"] for x in loaded])
    assert loaded_images.shape == (len(labels), 28, 28, 1)
    assert loaded_images.dtype == np.uint8
    # TFDS shuffles the order on write: compare as sorted (image, label) pairs.
    assert as_sorted_pairs(loaded_images[..., 0], [x["label"] for x in loaded]) == (
        as_sorted_pairs(images, labels))
  assert name in source.offline_datasets(data_dir)


def test_already_prepared_is_a_no_op(tmp_path, idx_dir, capsys):
  write_fixture(idx_dir)
  data_dir = str(tmp_path / "tfds")
  prepare_command("fashion_mnist", idx_dir, data_dir)
  info = prepared_files(data_dir)[0]
  mtime = os.stat(info).st_mtime_ns
  capsys.readouterr()
  builder = prepare_command("fashion_mnist", idx_dir, data_dir)
  assert "already prepared" in capsys.readouterr().out
  assert os.stat(info).st_mtime_ns == mtime
  assert builder.info.splits["train"].num_examples == 60


def test_missing_directory(tmp_path):
  with pytest.raises(source.DatasetError, match="not a directory"):
    idx.prepare("fashion_mnist", str(tmp_path / "nowhere"), str(tmp_path / "tfds"))


def test_missing_files_are_named(tmp_path, idx_dir):
  write_fixture(idx_dir)
  os.remove(os.path.join(idx_dir, "t10k-labels-idx1-ubyte.gz"))
  os.remove(os.path.join(idx_dir, "train-images-idx3-ubyte.gz"))
  data_dir = str(tmp_path / "tfds")
  with pytest.raises(source.DatasetError) as e:
    idx.prepare("fashion_mnist", idx_dir, data_dir)
  assert "train-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz" in str(e.value)
  assert not prepared_files(data_dir)


def test_truncated_gzip_is_named(tmp_path, idx_dir):
  write_fixture(idx_dir)
  path = os.path.join(idx_dir, "train-images-idx3-ubyte.gz")
  with open(path, "rb") as f:
    data = f.read()
  with open(path, "wb") as f:
    f.write(data[:len(data) // 2])
  data_dir = str(tmp_path / "tfds")
  with pytest.raises(source.DatasetError, match="truncated or corrupt") as e:
    idx.prepare("fashion_mnist", idx_dir, data_dir)
  assert path in str(e.value)
  assert not prepared_files(data_dir)


def test_count_mismatch_names_both_files(tmp_path, idx_dir):
  write_fixture(idx_dir)
  write_idx(os.path.join(idx_dir, "t10k-labels-idx1-ubyte.gz"),
            np.zeros(19, np.uint8), idx.LABELS_MAGIC)
  data_dir = str(tmp_path / "tfds")
  with pytest.raises(source.DatasetError) as e:
    idx.prepare("fashion_mnist", idx_dir, data_dir)
  message = str(e.value)
  assert "t10k-images-idx3-ubyte.gz holds 20 images" in message
  assert "t10k-labels-idx1-ubyte.gz holds 19 labels" in message
  assert not prepared_files(data_dir)


def test_bad_magic_is_named(tmp_path, idx_dir):
  write_fixture(idx_dir)
  path = os.path.join(idx_dir, "train-labels-idx1-ubyte.gz")
  write_idx(path, np.zeros(60, np.uint8), 0x1234)
  data_dir = str(tmp_path / "tfds")
  with pytest.raises(source.DatasetError, match="magic number") as e:
    idx.prepare("fashion_mnist", idx_dir, data_dir)
  assert path in str(e.value)
  assert not prepared_files(data_dir)


def test_failure_mid_way_leaves_nothing_prepared(tmp_path, idx_dir, monkeypatch):
  write_fixture(idx_dir)
  data_dir = str(tmp_path / "tfds")

  def failing_examples(self, num_examples, data_path, label_path):
    del self, num_examples, data_path, label_path
    yield 0, {"image": np.zeros((28, 28, 1), np.uint8), "label": 0}
    raise RuntimeError("disk full")

  monkeypatch.setattr(idx._LocalFashionMnist, "_generate_examples", failing_examples)
  with pytest.raises(RuntimeError, match="disk full"):
    idx.prepare("fashion_mnist", idx_dir, data_dir)
  assert not prepared_files(data_dir)
  assert not tfds.builder("fashion_mnist", data_dir=data_dir).is_prepared()
  assert "fashion_mnist" not in source.offline_datasets(data_dir)


def test_leftover_incomplete_folder_is_ignored_and_removed(tmp_path, idx_dir):
  write_fixture(idx_dir)
  data_dir = tmp_path / "tfds"
  stale = data_dir / "fashion_mnist" / "incomplete.ABC123_3.0.1"
  stale.mkdir(parents=True)
  (stale / "dataset_info.json").write_text("{}")
  assert "fashion_mnist" not in source.offline_datasets(str(data_dir))
  idx.prepare("fashion_mnist", idx_dir, str(data_dir))
  assert not stale.exists()
  assert prepared_files(str(data_dir)) == [
      str(data_dir / "fashion_mnist" / "3.0.1" / "dataset_info.json")]


def test_prepare_command_errors(tmp_path, idx_dir):
  with pytest.raises(source.DatasetError, match="--from DIR"):
    prepare_command("fashion_mnist", None, str(tmp_path))
  with pytest.raises(source.DatasetError, match="Cannot prepare 'cifar10'"):
    prepare_command("cifar10", idx_dir, str(tmp_path))


@pytest.mark.slow
@pytest.mark.skipif(not os.path.isdir(DEBIAN_DIR), reason=(
    f"{DEBIAN_DIR} is missing: the Debian package dataset-fashion-mnist is not "
    "installed (apt-get install dataset-fashion-mnist)."))
def test_prepare_debian_fashion_mnist(tmp_path):
  start = time.perf_counter()
  builder = prepare_command("fashion_mnist", DEBIAN_DIR, str(tmp_path))
  print(f"prepared Debian fashion_mnist in {time.perf_counter() - start:.1f} s")
  assert (builder.name, str(builder.version)) == ("fashion_mnist", "3.0.1")
  assert source.has_array_record(builder)
  # The decoded cache of both splits is written by prepare, and its manifest: later
  # runs open the dataset without TFDS.
  names = sorted(os.listdir(os.path.join(builder.data_dir, "decoded")))
  assert names[0] == "manifest.json" and names[1].startswith("test.") and len(names) == 5
  info = source.dataset_info(builder)
  assert cache.open_cached("fashion_mnist", str(tmp_path), 10**9)[0] == info
  assert (info.splits["train"], info.splits["test"], info.num_classes) == (60_000, 10_000, 10)
  assert info.image_shape == (28, 28, 1)
