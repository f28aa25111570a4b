"""`./run.sh prepare NAME [--from DIR] [--data_dir D]`: prepare a dataset offline.

The dataset ends up readable without TensorFlow: in ArrayRecord (a TFRecord-only one is
converted), with the decoded cache of each split that fits written beside it.
"""

from cnn_jax.data import cache, source
from cnn_jax.data.source import DatasetError

# As experiments/seed_cnn.py's in_memory_max_bytes: splits up to this size are cached.
CACHE_MAX_BYTES = 2 * 1024**3


def prepare_command(name: str, from_dir: str | None, data_dir: str | None = None):
  """Prepares dataset `name` in `data_dir` without network; returns its TFDS builder.

  Args:
    name: "mnist" or "fashion_mnist" (from the four IDX .gz files in `from_dir`), or
      a dataset of `builders.OFFLINE_BUILDERS` (e.g. "mnist_5k"; no `from_dir`).
    from_dir: directory of the local files; None for the offline builders.
    data_dir: TFDS data directory; None for TFDS's default.

  Raises:
    DatasetError: what was wrong (unknown name, missing or damaged file) and the fix.
  """
  source.tensorflow()  # Before any other TF use: hides accelerators from TensorFlow.
  from cnn_jax.data.builders import OFFLINE_BUILDERS, idx  # pylint: disable=g-import-not-at-top
  if name in idx.LOCAL_BUILDERS:
    if from_dir is None:
      raise DatasetError(
          f"Preparing {name} needs the directory of its four IDX .gz files: "
          f"./run.sh prepare {name} --from DIR (for fashion_mnist, "
          "/usr/share/datasets/fashion-mnist after 'apt-get install "
          "dataset-fashion-mnist').")
    idx.prepare(name, from_dir, data_dir)
    return make_readable(name, data_dir)
  if name in OFFLINE_BUILDERS:
    if from_dir is not None:
      raise DatasetError(f"{name} ships with this package; drop --from {from_dir}.")
    return make_readable(name, data_dir)
  raise DatasetError(
      f"Cannot prepare {name!r} offline. Known: "
      f"{', '.join(sorted(set(idx.LOCAL_BUILDERS) | set(OFFLINE_BUILDERS)))}; "
      "for a folder of images use --config.dataset=folder:/path instead.")


def make_readable(name: str, data_dir: str | None):
  """The prepared dataset `name`, in ArrayRecord (converted where needed), each split
  that fits cached decoded: what training reads, without TensorFlow."""
  builder = source.prepared_builder(name, data_dir)
  for split in builder.info.splits:
    cache.open_base_split(builder, split, CACHE_MAX_BYTES)
  return builder
