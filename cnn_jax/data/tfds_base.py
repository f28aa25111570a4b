"""What the parts of the data package share about TFDS: the error type, the file format
datasets are prepared in, and how TensorFlow is imported (only to prepare)."""

import contextlib
import io
import os
import sys
import tempfile
import time

from absl import logging

from cnn_jax.errors import Error


class DatasetError(Error, ValueError):
  """A dataset that cannot be found, prepared or read, with how to fix it."""


ARRAY_RECORD = "array_record"


def verbose() -> bool:
  """Whether TensorFlow's and TFDS's own console output is wanted (absl at INFO:
  `--verbose` on the command line)."""
  return logging.get_verbosity() >= logging.INFO


def tensorflow():
  """Imports TensorFlow, hiding accelerators from it so it never takes their memory."""
  if not verbose():  # Read when TensorFlow loads. oneDNN only announces itself here:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # TensorFlow only prepares data.
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  tf.config.set_visible_devices([], "GPU")
  return tf


def default_data_dir() -> str:
  """TFDS's data directory ($TFDS_DATA_DIR or ~/tensorflow_datasets), found as
  `tfds.core.constants` finds it, without importing TFDS."""
  return os.environ.get("TFDS_DATA_DIR",
                        os.path.join(os.path.expanduser("~"), "tensorflow_datasets"))


def new_or_prepared(make):
  """`make()`'s builder where it is prepared already (in any format), else
  `make(file_format="array_record")`, a builder that prepares in ArrayRecord."""
  with _no_leftover_tempdirs():
    builder = make()
    return builder if builder.is_prepared() else make(file_format=ARRAY_RECORD)


@contextlib.contextmanager
def _no_leftover_tempdirs():
  """Removes the empty `tmp*tfds` folders TFDS makes for GCS metadata it never fetches
  offline (one per builder of an unprepared dataset; TFDS never removes them)."""
  root, before = tempfile.gettempdir(), time.time() - 1
  try:
    yield
  finally:
    for name in os.listdir(root):
      path = os.path.join(root, name)
      if name.startswith("tmp") and name.endswith("tfds"):
        with contextlib.suppress(OSError):  # Not empty, or not ours: left alone.
          if os.path.getmtime(path) >= before:
            os.rmdir(path)


def download_and_prepare(builder, **kwargs) -> None:
  """`builder.download_and_prepare(**kwargs)`, with one line of ours instead of TFDS's
  messages (and its progress bars only on a terminal) unless `verbose()`."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  if verbose():
    builder.download_and_prepare(**kwargs)
    return
  print(f"Preparing {builder.name} {builder.version} in {builder.data_dir_root} "
        "(once)...", flush=True)
  if not sys.stderr.isatty():
    tfds.disable_progress_bar()
  with contextlib.redirect_stdout(io.StringIO()):
    builder.download_and_prepare(**kwargs)
