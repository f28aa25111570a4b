"""Command line: `python -m cnn_jax.main train|eval --config FILE --workdir DIR`.

Thin on purpose: parse flags, then call the library (run.train_and_evaluate).
"""

import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Experiment config file (experiments/*.py); override fields "
    "with --config.FIELD=VALUE.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints and metrics.")

COMMANDS = ("train",)


def main(argv):
  if len(argv) < 2 or argv[1] not in COMMANDS:
    raise app.UsageError(f"Give a command: one of {', '.join(COMMANDS)}.")
  command = argv[1]
  # Orbax logs every checkpoint write at INFO; keep the console for the run's own lines.
  logging.set_verbosity(logging.WARNING)
  if len(argv) > 2:
    raise app.UsageError(f"Unexpected arguments: {' '.join(argv[2:])}")
  from cnn_jax import run  # pylint: disable=g-import-not-at-top
  from cnn_jax.checkpoint import CheckpointError  # pylint: disable=g-import-not-at-top
  from cnn_jax.data import DatasetError  # pylint: disable=g-import-not-at-top
  if command == "train":
    if _CONFIG.value is None or _WORKDIR.value is None:
      raise app.UsageError("train needs --config and --workdir.")
    try:
      run.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
    except (DatasetError, CheckpointError, PermissionError, ValueError) as e:
      print(f"error: {e}", file=sys.stderr)
      return 2
  return 0


def entry():
  app.run(main)


if __name__ == "__main__":
  entry()
