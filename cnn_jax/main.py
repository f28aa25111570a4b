"""Command line: `python -m cnn_jax.main train|eval|prepare ...` (see README.md).

Thin on purpose: parse flags, then call the library.
"""

import atexit
import os
import sys
import threading

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Experiment config file (experiments/*.py); override fields "
    "with --config.FIELD=VALUE.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints and metrics.")
_STEP = flags.DEFINE_string("step", "latest", "eval, predict, export: checkpoint: "
                            "latest, best, or a step number.")
_OUT = flags.DEFINE_string("out", None, "report: directory for the figures (default "
                           "WORKDIR/report); export: a new directory.")
_FORMAT = flags.DEFINE_enum("format", "stablehlo", ["stablehlo", "savedmodel"],
                            "export: StableHLO (jax.export) or a TensorFlow SavedModel.")
_TOP_K = flags.DEFINE_integer("top_k", 3, "predict: classes shown per image.")
_SWEEP = flags.DEFINE_multi_string("sweep", [], "sweep: FIELD=V1,V2,... (repeat for a "
                                   "grid).")
_SEEDS = flags.DEFINE_integer("seeds", 1, "sweep: seeds per setting.")
_VMAP_SEEDS = flags.DEFINE_bool("vmap_seeds", False, "sweep: train the seeds of a "
                                "setting at once, in one program (jax.vmap; data in "
                                "memory).")
_REPORT_ONLY = flags.DEFINE_bool("report_only", False, "sweep: train nothing; write the "
                                 "table from the runs as they stand.")
_JSON = flags.DEFINE_bool("json", False, "predict: machine-readable output.")
_VERBOSE = flags.DEFINE_bool("verbose", False, "Show TensorFlow, TFDS and absl messages "
                             "(hidden by default).")
_FROM = flags.DEFINE_string("from", None, "prepare: directory holding the dataset's files.")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "prepare: TFDS data_dir to prepare "
                                "into (default: TFDS's).")
_LOCAL_PROCESSES = flags.DEFINE_integer(
    "local_processes", None, "Start this many processes of one job on this machine "
    "(each with the devices it sees), gathering their output.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Processes in the job.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index in the job.")
_COORDINATOR = flags.DEFINE_string("coordinator", None, "HOST:PORT of process 0's "
                                   "coordinator service.")
_DISTRIBUTED_TIMEOUT = flags.DEFINE_integer(
    "distributed_timeout", 120, "Seconds to wait for the other processes to join, and "
    "(a quarter of it, at least 10) for a silent process to be declared dead.")

USAGE = """commands:
  train --config FILE --workdir DIR [--config.FIELD=VALUE ...]
  eval --workdir DIR [--step latest|best|N]
  report --workdir DIR [--workdir DIR ...] [--out DIR]
  predict --workdir DIR [--step latest|best|N] [--top_k K] [--json] FILE...
  export --workdir DIR [--step ...] --format stablehlo|savedmodel --out DIR
  sweep --config FILE --workdir DIR --sweep FIELD=V1,V2 [--sweep ...] [--seeds N]
        [--vmap_seeds] [--report_only]
  prepare NAME --from DIR [--data_dir DIR]
multi-process: add --local_processes N (here), or --num_processes N --process_id I
  --coordinator HOST:PORT on each host (Slurm and Open MPI are detected by JAX)."""


def main(argv):
  command, args = (argv[1], argv[2:]) if len(argv) > 1 else (None, [])
  from cnn_jax import compile_cache  # pylint: disable=g-import-not-at-top
  from cnn_jax import launch  # pylint: disable=g-import-not-at-top
  from cnn_jax.cpu import flags as xla_flags  # pylint: disable=g-import-not-at-top
  xla_flags.set_default_flags()  # Before JAX starts a backend (children inherit them).
  compile_cache.set_default_env()  # Before JAX is imported (children inherit it too).
  if _LOCAL_PROCESSES.value:
    forwarded, skip = [], False
    for a in sys.argv[1:]:
      if not skip and not a.startswith("--local_processes"):
        forwarded.append(a)
      skip = not skip and a == "--local_processes"  # Its value is the next argument.
    return launch.launch_local(_LOCAL_PROCESSES.value, forwarded,
                               _DISTRIBUTED_TIMEOUT.value)
  # Orbax logs every checkpoint write at INFO, TFDS and TensorFlow their own notices:
  # the console keeps the run's own lines unless --verbose.
  # Errors we report ourselves (a failed save, a damaged checkpoint) are logged by Orbax
  # and TensorStore with whole tracebacks, and their coroutines print "Exception
  # ignored" dumps at exit: all of that is shown with --verbose only.
  logging.set_verbosity(logging.INFO if _VERBOSE.value else logging.FATAL)
  if not _VERBOSE.value:
    sys.unraisablehook = lambda unraisable: None
  from cnn_jax import errors  # pylint: disable=g-import-not-at-top
  from cnn_jax import preemption  # pylint: disable=g-import-not-at-top
  try:
    launch.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value,
                      _DISTRIBUTED_TIMEOUT.value)
    from cnn_jax import run  # pylint: disable=g-import-not-at-top
    if command == "train" and not args:
      path = config_flags.get_config_filename(flags.FLAGS["config"])
      if path is None or not _WORKDIR.value:
        raise app.UsageError("train needs --config and --workdir.\n" + USAGE)
      if not os.path.isfile(path):
        raise errors.ConfigError(f"--config {path}: no such file (relative paths are "
                                 f"read from {os.getcwd()}).")
      run.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
    elif command == "eval" and not args:
      if not _WORKDIR.value:
        raise app.UsageError("eval needs --workdir.\n" + USAGE)
      run.evaluate_checkpoint(_WORKDIR.value, _STEP.value)
    elif command == "report":
      from cnn_jax import plots  # pylint: disable=g-import-not-at-top
      workdirs = [w for w in [_WORKDIR.value, *args] if w]
      plots.report_command(workdirs, _OUT.value)
    elif command == "predict":
      from cnn_jax import predict  # pylint: disable=g-import-not-at-top
      if _WORKDIR.value is None:
        raise app.UsageError("predict needs --workdir.\n" + USAGE)
      return predict.predict_command(_WORKDIR.value, _STEP.value, args, _TOP_K.value,
                                     _JSON.value)
    elif command == "export" and not args:
      from cnn_jax import export  # pylint: disable=g-import-not-at-top
      if _WORKDIR.value is None:
        raise app.UsageError("export needs --workdir.\n" + USAGE)
      export.export_command(_WORKDIR.value, _STEP.value, _FORMAT.value, _OUT.value)
    elif command == "sweep" and not args:
      from cnn_jax import sweep  # pylint: disable=g-import-not-at-top
      path = config_flags.get_config_filename(flags.FLAGS["config"])
      if path is None or not _WORKDIR.value:
        raise app.UsageError("sweep needs --config and --workdir.\n" + USAGE)
      config = _CONFIG.value
      sweep.sweep(config, os.path.abspath(_WORKDIR.value),
                  sweep.parse_grid(_SWEEP.value, config), _SEEDS.value,
                  _VMAP_SEEDS.value, train=not _REPORT_ONLY.value)
    elif command == "prepare" and len(args) == 1:
      from cnn_jax import prepare  # pylint: disable=g-import-not-at-top
      prepare.prepare_command(args[0], _FROM.value, _DATA_DIR.value)
    else:
      raise app.UsageError(USAGE)
  except preemption.Preempted as e:
    print(f"preempted: {e}", file=sys.stderr)
    return preemption.PREEMPTED_EXIT_CODE
  except errors.DivergenceError as e:
    return _exit(f"error: {e}", DIVERGED_EXIT_CODE)
  except errors.Error as e:  # Ours: a one-line message. Anything else is a bug.
    return _exit(f"error: {e}", 2)
  except KeyboardInterrupt:
    return _exit("interrupted (before any training): nothing was saved or changed",
                 preemption.FORCED_EXIT_CODE)
  return 0


# Exit status of a run stopped because its loss diverged.
DIVERGED_EXIT_CODE = 3


def _exit(message: str, code: int):
  """Prints `message` and exits now: background threads (an Orbax writer waiting for a
  save that failed) must not keep the process alive."""
  print(message, file=sys.stderr)
  sys.stdout.flush()
  sys.stderr.flush()
  os._exit(code)  # pylint: disable=protected-access


def parse_flags(argv):
  """absl's flag parsing, with a bad flag or config override reported in one line."""
  try:
    return flags.FLAGS(argv)
  except (flags.Error, AttributeError, KeyError) as e:
    # ml_collections reports an unknown --config.FIELD as a chain of Attribute and
    # KeyErrors from the parser: the field's name is the useful part.
    message = str(e).strip().splitlines()[-1] if str(e).strip() else repr(e)
    if not isinstance(e, flags.Error):
      bad = [a.split("=")[0] for a in argv if a.startswith("--config.")]
      field = message.strip("\"'")
      bad = [a for a in bad if a.rsplit(".", 1)[-1] == field] or bad
      message = (f"{bad[0] if bad else '--config'}: the config has no field {field!r}")
    print(f"error: {message}\n(./run.sh --help lists the flags; config fields are those "
          "of experiments/seed_cnn.py)", file=sys.stderr)
    sys.exit(2)


def entry():
  try:
    app.run(main, flags_parser=parse_flags)
  except SystemExit as e:  # Every end but a bug's, whose traceback Python prints.
    _finish(e.code)


def _finish(code) -> None:
  """Ends the process as `sys.exit(code)` would, less the interpreter's teardown.

  What Python runs at exit is run here (other threads joined, atexit handlers: JAX's,
  logging's), then the process ends without tearing its modules and XLA's runtime
  down one object at a time, which took 0.3-0.4 s after every command.
  """
  if code is not None and not isinstance(code, int):
    print(code, file=sys.stderr)
    code = 1
  for thread in threading.enumerate():
    if thread is not threading.current_thread() and not thread.daemon:
      thread.join()
  atexit._run_exitfuncs()  # pylint: disable=protected-access
  sys.stdout.flush()
  sys.stderr.flush()
  os._exit(code or 0)  # pylint: disable=protected-access


if __name__ == "__main__":
  entry()
