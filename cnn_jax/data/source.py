"""Finding, preparing and reading TFDS datasets, online or offline."""

import dataclasses
import os
import socket

import numpy as np

# Host TFDS downloads from; probed before a download so an offline machine fails fast
# (TFDS itself retries for minutes before giving up).
_DOWNLOAD_HOST = ("storage.googleapis.com", 443)
# `config.dataset = "folder:/path"` reads a folder of class subfolders of images.
FOLDER_PREFIX = "folder:"


class DatasetError(ValueError):
  """A dataset that cannot be found, prepared or read, with how to fix it."""


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  """What the model and pipeline need to know about a dataset."""
  name: str
  image_shape: tuple[int, int, int]
  num_classes: int
  num_train: int
  num_test: int


def tensorflow():
  """Imports TensorFlow, hiding accelerators from it so it never takes their memory."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  tf.config.set_visible_devices([], "GPU")
  return tf


def network_reachable(timeout: float = 3.0) -> bool:
  """Whether TFDS's download host answers at all (DNS and TCP)."""
  try:
    with socket.create_connection(_DOWNLOAD_HOST, timeout=timeout):
      return True
  except OSError:
    return False


def offline_datasets(data_dir: str | None) -> list[str]:
  """Names of the datasets that work here without a network."""
  from cnn_jax.data.builders import OFFLINE_BUILDERS  # pylint: disable=g-import-not-at-top
  names = set(OFFLINE_BUILDERS)
  root = os.path.expanduser(data_dir or default_data_dir())
  if os.path.isdir(root):
    for name in os.listdir(root):
      if _is_prepared_dir(os.path.join(root, name)):
        names.add(name)
  return sorted(names)


def _is_prepared_dir(path: str) -> bool:
  if not os.path.isdir(path):
    return False
  for version in os.listdir(path):
    # TFDS prepares into `incomplete.*` and renames at the end; a killed run leaves it.
    if version.startswith("incomplete."):
      continue
    if os.path.exists(os.path.join(path, version, "dataset_info.json")):
      return True
  return False


def default_data_dir() -> str:
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  return tfds.core.constants.DATA_DIR


def get_builder(name: str, data_dir: str | None, folder_options=None):
  """Returns a prepared TFDS builder for `name`, preparing it first if needed.

  Offline builders of this package prepare from local files; `folder:/path` reads a
  folder of class subfolders of images; other datasets are downloaded by TFDS as
  usual, when the network allows.

  Args:
    name: a TFDS name, a name in `OFFLINE_BUILDERS`, or "folder:/path/to/root".
    data_dir: TFDS data directory; None for TFDS's default.
    folder_options: a `builders.folder.FolderOptions` (image size, test fraction,
      what to do with unreadable images); used by "folder:" datasets only. None for
      its defaults.

  Raises:
    DatasetError: the name is unknown, or the dataset cannot be prepared here.
  """
  tensorflow()
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  from cnn_jax.data.builders import OFFLINE_BUILDERS  # pylint: disable=g-import-not-at-top

  if name.startswith(FOLDER_PREFIX):
    from cnn_jax.data.builders import folder  # pylint: disable=g-import-not-at-top
    return folder.get_builder(name[len(FOLDER_PREFIX):], data_dir,
                              folder_options or folder.FolderOptions())
  if name in OFFLINE_BUILDERS:
    builder = OFFLINE_BUILDERS[name](data_dir=data_dir)
    if not builder.is_prepared():
      builder.download_and_prepare()
    return builder
  try:
    builder = tfds.builder(name, data_dir=data_dir)
  except tfds.core.registered.DatasetNotFoundError as e:
    raise DatasetError(
        f"Unknown dataset {name!r}: TFDS has no dataset of that name. Datasets that "
        f"work offline here: {', '.join(offline_datasets(data_dir))}.") from e
  if builder.is_prepared():
    return builder
  if not network_reachable():
    raise DatasetError(
        f"Dataset {name!r} is not prepared in {builder.data_dir_root} and cannot be "
        "downloaded: no network. Datasets that work offline here: "
        f"{', '.join(offline_datasets(data_dir))}. {_offline_fix(name, data_dir)}")
  builder.download_and_prepare()
  return builder


def _offline_fix(name: str, data_dir: str | None) -> str:
  from cnn_jax.data.builders import idx  # pylint: disable=g-import-not-at-top
  if name in idx.LOCAL_BUILDERS:
    data_dir_flag = f" --data_dir {data_dir}" if data_dir else ""
    return (f"Prepare {name!r} from its four IDX .gz files with './run.sh prepare "
            f"{name} --from DIR{data_dir_flag}' (for fashion_mnist, DIR=/usr/share/datasets/"
            "fashion-mnist after 'apt-get install dataset-fashion-mnist'), or set "
            "--config.data_dir to a directory where it is already prepared.")
  return ("Set --config.data_dir to a directory where it is already prepared, or use "
          "a folder of images: --config.dataset=folder:/path/to/root.")


def dataset_info(builder) -> DatasetInfo:
  """Reads image shape and class count from a builder's metadata."""
  image_key, label_key = _supervised_keys(builder)
  shape = tuple(builder.info.features[image_key].shape)
  if len(shape) != 3 or None in shape:
    raise DatasetError(
        f"Dataset {builder.name!r} has images of shape {shape}; this pipeline needs a "
        "fixed (height, width, channels) shape.")
  splits = builder.info.splits
  count = lambda s: splits[s].num_examples if s in splits else 0
  return DatasetInfo(
      name=builder.name,
      image_shape=shape,
      num_classes=builder.info.features[label_key].num_classes,
      num_train=count("train"),
      num_test=count("test"))


def _supervised_keys(builder) -> tuple[str, str]:
  keys = builder.info.supervised_keys
  if not keys or len(keys) != 2:
    raise DatasetError(
        f"Dataset {builder.name!r} has no (image, label) supervised keys; it is not an "
        "image-classification dataset.")
  return keys


def read_split(builder, split: str, chunk: int = 10_000) -> tuple[np.ndarray, np.ndarray]:
  """Reads a whole split as numpy (images uint8 [N, H, W, C], labels int32 [N])."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  # Batched reads, not batch_size=-1: that one aborts under tfds.testing.mock_data.
  ds = builder.as_dataset(split=split, as_supervised=True, shuffle_files=False)
  images, labels = [], []
  for x, y in tfds.as_numpy(ds.batch(chunk)):
    images.append(x)
    labels.append(y)
  if not images:
    raise DatasetError(f"Split {split!r} of {builder.name!r} is empty.")
  return np.concatenate(images).astype(np.uint8), np.concatenate(labels).astype(np.int32)
