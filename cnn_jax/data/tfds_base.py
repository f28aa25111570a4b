"""What the parts of the data package share about TFDS: the error type, the file format
datasets are prepared in, and how TensorFlow is imported (only to prepare)."""


class DatasetError(ValueError):
  """A dataset that cannot be found, prepared or read, with how to fix it."""


ARRAY_RECORD = "array_record"


def tensorflow():
  """Imports TensorFlow, hiding accelerators from it so it never takes their memory."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  tf.config.set_visible_devices([], "GPU")
  return tf


def default_data_dir() -> str:
  """TFDS's data directory ($TFDS_DATA_DIR or ~/tensorflow_datasets)."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  return tfds.core.constants.DATA_DIR


def new_or_prepared(make):
  """`make()`'s builder where it is prepared already (in any format), else
  `make(file_format="array_record")`, a builder that prepares in ArrayRecord."""
  builder = make()
  return builder if builder.is_prepared() else make(file_format=ARRAY_RECORD)
