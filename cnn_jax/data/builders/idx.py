"""Prepares the genuine TFDS `mnist` and `fashion_mnist` from local IDX .gz files.

TFDS downloads these datasets; on a machine without network, `prepare` builds the
same dataset (stock name, version, features, label names) from the four IDX files,
e.g. Debian's package `dataset-fashion-mnist` (/usr/share/datasets/fashion-mnist).
Afterwards a plain `tfds.load("fashion_mnist", data_dir=D)` reads it with the stock
builder. The files are checked before anything is written, and TFDS writes into an
`incomplete.*` folder that is renamed only once the dataset is complete.
"""

import gzip
import os
import shutil
import struct
import tempfile
import zlib

import numpy as np
import tensorflow_datasets as tfds
from tensorflow_datasets.image_classification import mnist as tfds_mnist

from cnn_jax.data.tfds_base import ARRAY_RECORD, DatasetError, download_and_prepare

# The names TFDS's stock builders download, which the upstream sites and Debian use too.
FILES = {
    "train_data": "train-images-idx3-ubyte.gz",
    "train_labels": "train-labels-idx1-ubyte.gz",
    "test_data": "t10k-images-idx3-ubyte.gz",
    "test_labels": "t10k-labels-idx1-ubyte.gz",
}
IMAGES_MAGIC = 2051  # 0x00000803: unsigned bytes, 3 dimensions.
LABELS_MAGIC = 2049  # 0x00000801: unsigned bytes, 1 dimension.
IMAGE_SIZE = 28
NUM_CLASSES = 10


class _FromLocalFiles:
  """Replaces the stock download step by unzipped IDX files in `idx_dir`."""

  idx_dir: str = ""
  counts: dict[str, int] = {}

  def _split_generators(self, dl_manager):
    del dl_manager  # Nothing to download: the files were checked and unzipped.
    return [
        tfds.core.SplitGenerator(
            name=split,
            gen_kwargs=dict(
                num_examples=self.counts[split],
                data_path=os.path.join(self.idx_dir, FILES[f"{split}_data"][:-3]),
                label_path=os.path.join(self.idx_dir, FILES[f"{split}_labels"][:-3]),
            ),
        ) for split in ("train", "test")
    ]


class _LocalMnist(_FromLocalFiles, tfds_mnist.MNIST, skip_registration=True):
  name = "mnist"


class _LocalFashionMnist(_FromLocalFiles, tfds_mnist.FashionMNIST,
                         skip_registration=True):
  name = "fashion_mnist"


LOCAL_BUILDERS = {"mnist": _LocalMnist, "fashion_mnist": _LocalFashionMnist}


def _read_gz(path: str) -> bytes:
  try:
    with gzip.open(path, "rb") as f:
      return f.read()
  except (EOFError, OSError, zlib.error) as e:
    raise DatasetError(
        f"{path} is not a readable gzip file ({e}); it is truncated or corrupt. "
        "Copy or download it again.") from e


def _parse_idx(path: str, data: bytes, magic: int, dims: int) -> int:
  """Checks one IDX file's header and size; returns its number of items."""
  header_size = 4 + 4 * dims
  if len(data) < header_size:
    raise DatasetError(
        f"{path} holds {len(data)} bytes after unzipping, less than an IDX header; "
        "it is not an IDX file. Copy or download it again.")
  found, *shape = struct.unpack(f">{1 + dims}I", data[:header_size])
  if found != magic:
    raise DatasetError(
        f"{path} has IDX magic number {found:#010x}, expected {magic:#010x} "
        f"({'images' if dims == 3 else 'labels'}). Check that the file is the one its "
        "name says (images and labels swapped?) and not damaged.")
  if dims == 3 and tuple(shape[1:]) != (IMAGE_SIZE, IMAGE_SIZE):
    raise DatasetError(
        f"{path} holds images of {shape[1]}x{shape[2]} pixels; MNIST and "
        f"Fashion-MNIST images are {IMAGE_SIZE}x{IMAGE_SIZE}.")
  expected = header_size + int(np.prod(shape))
  if len(data) != expected:
    raise DatasetError(
        f"{path} holds {len(data)} bytes after unzipping; its header ({shape}) says "
        f"{expected}. The file is truncated or damaged: copy or download it again.")
  return shape[0]


def check_files(from_dir: str) -> dict[str, bytes]:
  """Checks the four IDX .gz files in `from_dir`; returns their unzipped contents.

  Raises:
    DatasetError: naming the file that is missing, corrupt or inconsistent.
  """
  if not os.path.isdir(from_dir):
    raise DatasetError(
        f"{from_dir} is not a directory. Give the directory that holds the four IDX "
        f"files ({', '.join(FILES.values())}), e.g. /usr/share/datasets/fashion-mnist "
        "after 'apt-get install dataset-fashion-mnist'.")
  missing = [f for f in FILES.values() if not os.path.isfile(os.path.join(from_dir, f))]
  if missing:
    raise DatasetError(
        f"{from_dir} lacks {', '.join(missing)}. It must hold all four IDX files "
        f"({', '.join(FILES.values())}), gzipped, with these names.")
  contents, counts = {}, {}
  for key, filename in FILES.items():
    path = os.path.join(from_dir, filename)
    contents[key] = _read_gz(path)
    is_images = key.endswith("_data")
    counts[key] = _parse_idx(path, contents[key], IMAGES_MAGIC if is_images else
                             LABELS_MAGIC, 3 if is_images else 1)
  for split in ("train", "test"):
    n_images, n_labels = counts[f"{split}_data"], counts[f"{split}_labels"]
    if n_images != n_labels:
      raise DatasetError(
          f"{FILES[f'{split}_data']} holds {n_images} images but "
          f"{FILES[f'{split}_labels']} holds {n_labels} labels (in {from_dir}); "
          "the two files of a split must match. Use files from the same release.")
    labels = np.frombuffer(contents[f"{split}_labels"], np.uint8, offset=8)
    if labels.size and labels.max() >= NUM_CLASSES:
      raise DatasetError(
          f"{os.path.join(from_dir, FILES[f'{split}_labels'])} holds label "
          f"{labels.max()}; labels must be 0..{NUM_CLASSES - 1}.")
  return contents


def _remove_stale_incomplete(builder) -> None:
  # A killed preparation leaves `incomplete.*` next to the version folder; it is never
  # read by TFDS but holds a dataset_info.json that a folder listing could mistake.
  parent = os.path.dirname(os.fspath(builder.data_dir))
  if not os.path.isdir(parent):
    return
  for entry in os.listdir(parent):
    if entry.startswith("incomplete."):
      print(f"Removing {os.path.join(parent, entry)}, left by an interrupted preparation.")
      shutil.rmtree(os.path.join(parent, entry), ignore_errors=True)


def prepare(name: str, from_dir: str, data_dir: str | None):
  """Prepares the genuine TFDS dataset `name` in `data_dir` from local IDX files.

  Args:
    name: "mnist" or "fashion_mnist".
    from_dir: directory with the four gzipped IDX files under their usual names.
    data_dir: TFDS data directory; None for TFDS's default.

  Returns:
    The stock TFDS builder of the prepared dataset.

  Raises:
    DatasetError: unknown name, or a missing, corrupt or inconsistent file. Nothing
      is written in that case.
  """
  if name not in LOCAL_BUILDERS:
    raise DatasetError(
        f"Cannot prepare {name!r} from IDX files; known: {', '.join(LOCAL_BUILDERS)}.")
  from_dir = os.path.abspath(os.path.expanduser(from_dir))
  stock = tfds.builder(name, data_dir=data_dir)
  if stock.is_prepared():
    print(f"{name} {stock.version} is already prepared in {stock.data_dir}; "
          "nothing to do.")
    return stock
  contents = check_files(from_dir)
  builder = LOCAL_BUILDERS[name](data_dir=data_dir, file_format=ARRAY_RECORD)
  _remove_stale_incomplete(builder)
  with tempfile.TemporaryDirectory(prefix=f"{name}_idx_") as tmp:
    # The stock _generate_examples reads unzipped files with the counts it is given.
    for key, data in contents.items():
      with open(os.path.join(tmp, FILES[key][:-3]), "wb") as f:
        f.write(data)
    builder.idx_dir = tmp
    builder.counts = {
        split: (len(contents[f"{split}_labels"]) - 8) for split in ("train", "test")}
    del contents
    download_and_prepare(
        builder, download_config=tfds.download.DownloadConfig(try_download_gcs=False))
  print(f"Prepared {name} {builder.version} in {builder.data_dir} from {from_dir}: "
        f"{builder.counts['train']} train, {builder.counts['test']} test examples.")
  return tfds.builder(name, data_dir=data_dir)
