"""Tests of cnn_jax.data.builders.folder: `config.dataset = "folder:/path"`."""

import os

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from cnn_jax import data
from cnn_jax.data import source
from cnn_jax.data.builders import folder

RED = (200, 0, 0)


@pytest.fixture(autouse=True)
def _quiet():
  tfds.disable_progress_bar()


def write_images(directory, n, color=RED, size=(12, 16), channels=3, ext="png"):
  """Writes n solid-colour images of (height, width) `size` into directory."""
  os.makedirs(directory, exist_ok=True)
  for i in range(n):
    pixel = np.array(color[:channels], np.uint8)
    image = np.broadcast_to(pixel, (*size, channels))
    encode = tf.io.encode_png if ext == "png" else tf.io.encode_jpeg
    tf.io.write_file(os.path.join(directory, f"img{i:03d}.{ext}"), encode(image))


def load(root, data_dir, **options):
  builder = source.get_builder(f"folder:{root}", str(data_dir),
                               folder_options=folder.FolderOptions(**options))
  return builder, source.dataset_info(builder)


def prepared_files(data_dir):
  return [os.path.join(d, f) for d, _, files in os.walk(data_dir) for f in files
          if f == "dataset_info.json"]


def test_train_test_layout(tmp_path):
  root = tmp_path / "pets"
  for split, n in (("train", 3), ("test", 2)):
    write_images(root / split / "cat", n)
    write_images(root / split / "dog", n, color=(0, 0, 250), ext="jpg")
  builder, info = load(root, tmp_path / "tfds", image_size=(8, 8, 3))
  assert info.image_shape == (8, 8, 3)
  assert (info.num_classes, info.splits["train"], info.splits["test"]) == (2, 6, 4)
  assert builder.info.features["label"].names == ["cat", "dog"]
  images, labels = data.read_split(builder, "test")
  assert images.shape == (4, 8, 8, 3) and images.dtype == np.uint8
  assert sorted(labels.tolist()) == [0, 0, 1, 1]
  red = images[labels == 0]
  np.testing.assert_array_equal(red, np.broadcast_to(RED, red.shape))


def test_single_tree_split_is_stratified_and_deterministic(tmp_path):
  root = tmp_path / "tree"
  for name, n in (("a", 10), ("b", 5), ("c", 3)):
    write_images(root / name, n)
  builder, info = load(root, tmp_path / "tfds", image_size=(4, 4, 1),
                       test_fraction=0.2)
  assert (info.splits["train"], info.splits["test"]) == (14, 4)
  _, test_labels = data.read_split(builder, "test")
  _, train_labels = data.read_split(builder, "train")
  assert np.bincount(test_labels).tolist() == [2, 1, 1]
  assert np.bincount(train_labels).tolist() == [8, 4, 2]
  scan = folder.scan_folder(str(root), folder.FolderOptions(test_fraction=0.2))
  test_a = [os.path.basename(p) for p, label in scan.splits["test"] if label == 0]
  assert test_a == ["img002.png", "img007.png"]
  assert folder.test_indices(10, 0.2) == [2, 7]


def test_resize_and_channel_conversion(tmp_path):
  root = tmp_path / "colours"
  write_images(root / "red", 2, color=RED, size=(30, 20))
  write_images(root / "gray", 2, color=(90,), channels=1, size=(5, 7))
  gray_builder, info = load(root, tmp_path / "tfds", image_size=(6, 6, 1))
  assert info.image_shape == (6, 6, 1)
  images, labels = data.read_split(gray_builder, "train")
  assert images.shape == (2, 6, 6, 1)
  assert np.all(images[labels == 0] == 90)  # "gray" sorts first.
  red_as_gray = images[labels == 1]
  assert np.all(np.abs(red_as_gray.astype(int) - round(0.2989 * 200)) <= 1)

  rgb_builder, info = load(root, tmp_path / "tfds", image_size=(6, 6, 3))
  assert info.image_shape == (6, 6, 3)
  images, labels = data.read_split(rgb_builder, "train")
  assert np.all(images[labels == 0] == 90)
  np.testing.assert_array_equal(images[labels == 1],
                                np.broadcast_to(RED, (1, 6, 6, 3)))


def test_corrupt_file_skipped_with_count(tmp_path, capsys):
  root = tmp_path / "tree"
  write_images(root / "a", 4)
  write_images(root / "b", 4)
  (root / "a" / "img000.png").write_bytes(b"not an image")
  _, info = load(root, tmp_path / "tfds", on_bad_image="skip")
  assert info.splits["train"] + info.splits["test"] == 7
  out = capsys.readouterr().out
  assert "Skipped 1 unreadable image file(s)" in out
  assert str(root / "a" / "img000.png") in out


def test_corrupt_file_error_names_path(tmp_path):
  root = tmp_path / "tree"
  write_images(root / "a", 4)
  write_images(root / "b", 4)
  (root / "b" / "img003.png").write_bytes(b"\x89PNG broken")
  data_dir = tmp_path / "tfds"
  with pytest.raises(source.DatasetError, match="not a readable image") as e:
    load(root, data_dir, on_bad_image="error")
  assert str(root / "b" / "img003.png") in str(e.value)
  assert not prepared_files(data_dir)


def test_class_with_only_unreadable_images_is_an_error(tmp_path):
  root = tmp_path / "tree"
  write_images(root / "a", 3)
  os.makedirs(root / "b")
  for i in range(3):
    (root / "b" / f"x{i}.png").write_bytes(b"junk")
  with pytest.raises(source.DatasetError, match="no readable image of class"):
    load(root, tmp_path / "tfds")
  assert not prepared_files(tmp_path / "tfds")


@pytest.mark.parametrize("make, message", [
    (lambda root: (write_images(root / "a", 3), os.makedirs(root / "b")),
     "holds no image"),
    (lambda root: write_images(root / "only", 3), "at least two"),
    (lambda root: (write_images(root / "train" / "a", 2),
                   write_images(root / "train" / "b", 2),
                   write_images(root / "test" / "a", 2),
                   write_images(root / "test" / "c", 2)),
     r"only in train: \['b'\], only in test: \['c'\]"),
    (lambda root: (write_images(root / "train" / "a", 2),
                   write_images(root / "train" / "b", 2)), "does not"),
    (lambda root: (write_images(root / "a", 1), write_images(root / "b", 3)),
     "at least two per class"),
    (lambda root: (write_images(root / "a", 2), write_images(root / "b", 2),
                   write_images(root, 1)), "images must be in one subfolder"),
])
def test_layout_errors(tmp_path, make, message):
  root = tmp_path / "bad"
  root.mkdir()
  make(root)
  with pytest.raises(source.DatasetError, match=message):
    load(root, tmp_path / "tfds")
  assert not prepared_files(tmp_path / "tfds")


def test_missing_folder_and_bad_options(tmp_path):
  with pytest.raises(source.DatasetError, match="does not exist"):
    load(tmp_path / "nowhere", tmp_path / "tfds")
  with pytest.raises(source.DatasetError, match="channels 1"):
    folder.FolderOptions(image_size=(28, 28, 2))
  with pytest.raises(source.DatasetError, match="between 0 and 1"):
    folder.FolderOptions(test_fraction=1.0)
  with pytest.raises(source.DatasetError, match="on_bad_image"):
    folder.FolderOptions(on_bad_image="ignore")


def test_changed_folder_is_prepared_again(tmp_path):
  root = tmp_path / "tree"
  write_images(root / "a", 3)
  write_images(root / "b", 3)
  first, info = load(root, tmp_path / "tfds")
  assert info.splits["train"] + info.splits["test"] == 6
  again, _ = load(root, tmp_path / "tfds")
  assert again.data_dir == first.data_dir
  write_images(root / "c", 2)
  changed, info = load(root, tmp_path / "tfds")
  assert changed.data_dir != first.data_dir
  assert (info.num_classes, info.splits["train"] + info.splits["test"]) == (3, 8)
