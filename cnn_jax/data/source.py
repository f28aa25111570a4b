"""Finding and preparing TFDS datasets, online or offline, in ArrayRecord.

Datasets are read through TFDS data sources (random access, no TensorFlow), so they
must be prepared in ArrayRecord. TensorFlow is imported only to prepare a dataset or
to convert one found prepared as TFRecord alone; opening a prepared dataset
(`prepared_builder`) never imports it.
"""

import dataclasses
import functools
import os
import socket
import sys
import types

from cnn_jax.data.tfds_base import (ARRAY_RECORD, DatasetError, default_data_dir,
                                    download_and_prepare, new_or_prepared, tensorflow)

# Host TFDS downloads from; probed before a download so an offline machine fails fast
# (TFDS itself retries for minutes before giving up).
_DOWNLOAD_HOST = ("storage.googleapis.com", 443)
# `config.dataset = "folder:/path"` reads a folder of class subfolders of images.
FOLDER_PREFIX = "folder:"


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  """What the model and the loop need to know about a dataset.

  Attributes:
    name: the TFDS name.
    image_shape: (height, width, channels).
    num_classes: number of labels.
    class_names: a name per label.
    splits: named split ("train", "test", "validation" if any) -> number of examples.
  """
  name: str
  image_shape: tuple[int, int, int]
  num_classes: int
  class_names: tuple[str, ...] = ()
  splits: dict[str, int] = dataclasses.field(default_factory=dict)


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


def check_dataset(name: str, data_dir: str | None) -> None:
  """Refuses, in under a second and before any work, a dataset that cannot load: an
  unknown name (with the nearest known one), a missing image folder, a TFDS dataset
  neither prepared in `data_dir` nor downloadable (no network).

  Raises:
    DatasetError: what is wrong with `name` and how to fix it.
  """
  if name.startswith(FOLDER_PREFIX):
    root = os.path.abspath(os.path.expanduser(name[len(FOLDER_PREFIX):]))
    if not os.path.isdir(root):
      raise DatasetError(
          f"config.dataset={name!r}: image folder {root} does not exist or is not a "
          "directory; give 'folder:/path/to/root', with root/<class>/*.png or "
          "root/train/<class>/... and root/test/<class>/...")
    return
  offline = offline_datasets(data_dir)  # The package's builders and those prepared.
  if name in offline:
    return
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  known = tfds.list_builders(with_community_datasets=False)
  if name not in known:
    import difflib  # pylint: disable=g-import-not-at-top
    near = difflib.get_close_matches(name, offline + known, n=1)
    raise DatasetError(
        f"Unknown dataset {name!r}: TFDS has no dataset of that name" +
        (f"; did you mean {near[0]!r}?" if near else ".") +
        f" Datasets that work offline here: {', '.join(offline)}; or a folder of "
        "images: --config.dataset=folder:/path/to/root.")
  if not network_reachable():
    root = os.path.expanduser(data_dir or default_data_dir())
    raise DatasetError(
        f"Dataset {name!r} is not prepared in {root} and cannot be downloaded: no "
        f"network. Datasets that work offline here: {', '.join(offline)}. "
        f"{_offline_fix(name, data_dir)}")


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


def get_builder(name: str, data_dir: str | None, folder_options=None):
  """Returns a prepared TFDS builder for `name`, preparing it first if needed.

  Offline builders of this package prepare from local files; `folder:/path` reads a
  folder of class subfolders of images; other datasets are downloaded by TFDS as
  usual, when the network allows. New preparations are written in ArrayRecord. This
  imports TensorFlow; `prepared_builder` avoids it when the dataset is ready.

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
    builder = new_or_prepared(functools.partial(OFFLINE_BUILDERS[name], data_dir=data_dir))
    if not builder.is_prepared():
      download_and_prepare(builder)
    return builder
  try:
    builder = new_or_prepared(functools.partial(tfds.builder, name, data_dir=data_dir))
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
  download_and_prepare(builder)
  return builder


def has_array_record(builder) -> bool:
  """Whether the prepared dataset can be read as TFDS data sources (ArrayRecord)."""
  info = builder.info
  formats = [info.file_format, *info.alternative_file_formats]
  return ARRAY_RECORD in {str(getattr(f, "value", f)) for f in formats}


def convert_to_array_record(builder) -> None:
  """Adds ArrayRecord shards beside a dataset prepared in TFRecord only (in place).

  TFDS's own converter (`tfds convert_format`) does the work. Its module defines a
  Beam class when imported, even for the local conversion used here; where Apache Beam
  is not installed, a stand-in module is given for that import alone.
  """
  tensorflow()
  print(f"{builder.name} in {builder.data_dir} is prepared as TFRecord only; converting "
        "it once to ArrayRecord (read without TensorFlow) beside it.", flush=True)
  try:
    import apache_beam  # pylint: disable=g-import-not-at-top,unused-import
    stand_in = False
  except ImportError:
    stand_in = True
    sys.modules["apache_beam"] = types.SimpleNamespace(DoFn=object)
  try:
    from tensorflow_datasets.scripts.cli import convert_format_utils  # pylint: disable=g-import-not-at-top
    convert_format_utils.convert_dataset(
        out_dir=None, out_file_format=ARRAY_RECORD,
        dataset_version_dir=os.fspath(builder.data_dir), num_workers=1)
  finally:
    if stand_in:
      sys.modules.pop("apache_beam", None)


def open_prepared(name: str, data_dir: str | None, folder_options=None):
  """The prepared dataset `name` read from its files, or None where it is not prepared.

  Reads only the dataset's metadata: no TensorFlow, no builder code.
  """
  from tensorflow_datasets.core import read_only_builder  # pylint: disable=g-import-not-at-top
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  if name.startswith(FOLDER_PREFIX):
    from cnn_jax.data.builders import folder  # pylint: disable=g-import-not-at-top
    path = folder.prepared_dir(name[len(FOLDER_PREFIX):], data_dir,
                               folder_options or folder.FolderOptions())
    if not os.path.exists(os.path.join(path, "dataset_info.json")):
      return None
    return read_only_builder.builder_from_directory(path)
  try:
    return read_only_builder.builder_from_files(name, data_dir=data_dir)
  except tfds.core.registered.DatasetNotFoundError:
    return None


def prepared_builder(name: str, data_dir: str | None, folder_options=None):
  """A builder of `name` readable as data sources, preparing or converting it if needed.

  A dataset already prepared in ArrayRecord is opened without importing TensorFlow;
  otherwise it is prepared (`get_builder`) or, when found as TFRecord only, converted
  once (`convert_to_array_record`), both of which need TensorFlow.
  """
  builder = open_prepared(name, data_dir, folder_options)
  if builder is not None and has_array_record(builder):
    return builder
  builder = get_builder(name, data_dir, folder_options)
  if not has_array_record(builder):
    convert_to_array_record(builder)
    builder = open_prepared(name, data_dir, folder_options)
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


def dataset_info(builder, splits: dict[str, int] | None = None) -> DatasetInfo:
  """Reads image shape and classes from a builder's metadata.

  Args:
    builder: a prepared TFDS builder.
    splits: the size of each named split (default: the dataset's own splits).
  """
  image_key, label_key = supervised_keys(builder)
  shape = tuple(builder.info.features[image_key].shape)
  if len(shape) != 3 or None in shape:
    raise DatasetError(
        f"Dataset {builder.name!r} has images of shape {shape}; this pipeline needs a "
        "fixed (height, width, channels) shape.")
  label = builder.info.features[label_key]
  if splits is None:
    splits = {k: v.num_examples for k, v in builder.info.splits.items()}
  return DatasetInfo(name=builder.name, image_shape=shape, num_classes=label.num_classes,
                     class_names=tuple(label.names), splits=dict(splits or {}))


def supervised_keys(builder) -> tuple[str, str]:
  """The (image, label) feature names of an image-classification dataset."""
  keys = builder.info.supervised_keys
  if not keys or len(keys) != 2:
    raise DatasetError(
        f"Dataset {builder.name!r} has no (image, label) supervised keys; it is not an "
        "image-classification dataset.")
  return tuple(keys)
