"""Command line: `python -m cnn_jax.main train|eval|prepare ...` (see README.md).

Thin on purpose: parse flags, then call the library.
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
_STEP = flags.DEFINE_string("step", "latest", "eval: checkpoint to evaluate: latest, "
                            "best, or a step number.")
_FROM = flags.DEFINE_string("from", None, "prepare: directory holding the dataset's files.")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "prepare: TFDS data_dir to prepare "
                                "into (default: TFDS's).")

USAGE = """commands:
  train --config FILE --workdir DIR [--config.FIELD=VALUE ...]
  eval --workdir DIR [--step latest|best|N]
  prepare NAME --from DIR [--data_dir DIR]"""


def main(argv):
  command, args = (argv[1], argv[2:]) if len(argv) > 1 else (None, [])
  # Orbax logs every checkpoint write at INFO; keep the console for the run's own lines.
  logging.set_verbosity(logging.WARNING)
  from cnn_jax import preemption  # pylint: disable=g-import-not-at-top
  from cnn_jax import run  # pylint: disable=g-import-not-at-top
  from cnn_jax.checkpoint import CheckpointError  # pylint: disable=g-import-not-at-top
  from cnn_jax.data import DatasetError  # pylint: disable=g-import-not-at-top
  try:
    if command == "train" and not args:
      if _CONFIG.value is None or _WORKDIR.value is None:
        raise app.UsageError("train needs --config and --workdir.\n" + USAGE)
      run.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
    elif command == "eval" and not args:
      if _WORKDIR.value is None:
        raise app.UsageError("eval needs --workdir.\n" + USAGE)
      run.evaluate_checkpoint(_WORKDIR.value, _STEP.value)
    elif command == "prepare" and len(args) == 1:
      from cnn_jax import prepare  # pylint: disable=g-import-not-at-top
      prepare.prepare_command(args[0], _FROM.value, _DATA_DIR.value)
    else:
      raise app.UsageError(USAGE)
  except preemption.Preempted as e:
    print(f"preempted: {e}", file=sys.stderr)
    return preemption.PREEMPTED_EXIT_CODE
  except (DatasetError, CheckpointError, PermissionError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  return 0


def entry():
  app.run(main)


if __name__ == "__main__":
  entry()
