"""Command line: `python -m cnn_jax.main train|eval|prepare ...` (see README.md).

Thin on purpose: parse flags, then call the library.
"""

import ast
import atexit
import difflib
import os
import re
import runpy
import sys
import threading
import traceback

from absl import app
from absl import flags
from absl import logging
import ml_collections
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
_SEEDS = flags.DEFINE_integer("seeds", 1, "sweep: seeds per setting; speedrun: seeds "
                              "per training length (default 5).")
_EPOCHS = flags.DEFINE_list("epochs", [], "speedrun: training lengths, e.g. 4,6,8 "
                            "(default: the recipe's num_epochs).")
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
    "(each with the devices it sees), gathering their output.", lower_bound=1)
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Processes in the job.",
                                      lower_bound=1)
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index in the job.",
                                   lower_bound=0)
_COORDINATOR = flags.DEFINE_string("coordinator", None, "HOST:PORT of process 0's "
                                   "coordinator service.")
_DISTRIBUTED_TIMEOUT = flags.DEFINE_integer(
    "distributed_timeout", 120, "Seconds to wait for the other processes to join, and "
    "(a quarter of it, at least 10) for a silent process to be declared dead.",
    lower_bound=1)

# command -> its usage line.
COMMANDS = {
    "train": "train --config FILE --workdir DIR [--config.FIELD=VALUE ...]",
    "eval": "eval --workdir DIR [--step latest|best|N]",
    "report": "report --workdir DIR [--workdir DIR ...] [--out DIR]",
    "predict": "predict --workdir DIR [--step latest|best|N] [--top_k K] [--json] FILE...",
    "export": "export --workdir DIR [--step ...] --format stablehlo|savedmodel --out DIR",
    "sweep": "sweep --config FILE --workdir DIR --sweep FIELD=V1,V2 [--sweep ...] "
             "[--seeds N] [--vmap_seeds] [--report_only]",
    "prepare": "prepare NAME --from DIR [--data_dir DIR]",
    "speedrun": "speedrun [--config FILE] [--workdir DIR] [--seeds N] [--epochs E1,E2,...] "
                "[--config.FIELD=VALUE ...]",
}
# speedrun's recipe and runs folder when --config and --workdir are not given.
SPEEDRUN_CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))), "experiments", "speedrun_fashion_mnist.py")
SPEEDRUN_WORKDIR = os.path.join("runs", "speedrun")
USAGE = ("commands:\n" + "\n".join(f"  {line}" for line in COMMANDS.values()) + """
multi-process: add --local_processes N (here), or --num_processes N --process_id I
  --coordinator HOST:PORT on each host (Slurm and Open MPI are detected by JAX).""")
# Nested dicts of keyword arguments whose keys an experiment need not list: an override
# --config.model_kwargs.width=8 adds the key (the model then checks it takes it).
_KWARGS_FIELDS = ("model_kwargs", "optimizer_kwargs")
_kwargs_overrides: list[tuple[str, str, str]] = []  # (field, key, value) from argv.
_original_argv: list[str] = []  # sys.argv as given (forwarded to --local_processes).


def main(argv):
  command, args = (argv[1], argv[2:]) if len(argv) > 1 else (None, [])
  _check_command(command, args)
  from cnn_jax import compile_cache  # pylint: disable=g-import-not-at-top
  from cnn_jax import launch  # pylint: disable=g-import-not-at-top
  from cnn_jax.cpu import flags as xla_flags  # pylint: disable=g-import-not-at-top
  xla_flags.set_default_flags()  # Before JAX starts a backend (children inherit them).
  compile_cache.set_default_env()  # Before JAX is imported (children inherit it too).
  if _LOCAL_PROCESSES.value:
    forwarded, skip = [], False
    for a in _original_argv[1:]:
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
      path = _config_path(_original_argv)
      if path is None or not _WORKDIR.value:
        _usage_error(f"train needs --config and --workdir: {COMMANDS['train']}")
      run.train_and_evaluate(_config(), _WORKDIR.value)
    elif command == "eval":
      if not _WORKDIR.value:
        _usage_error(f"eval needs --workdir: {COMMANDS['eval']}")
      run.evaluate_checkpoint(_WORKDIR.value, _STEP.value)
    elif command == "report":
      from cnn_jax import plots  # pylint: disable=g-import-not-at-top
      workdirs = [w for w in [_WORKDIR.value, *args] if w]
      plots.report_command(workdirs, _OUT.value)
    elif command == "predict":
      from cnn_jax import predict  # pylint: disable=g-import-not-at-top
      if not _WORKDIR.value:
        _usage_error(f"predict needs --workdir: {COMMANDS['predict']}")
      return predict.predict_command(_WORKDIR.value, _STEP.value, args, _TOP_K.value,
                                     _JSON.value)
    elif command == "export":
      from cnn_jax import export  # pylint: disable=g-import-not-at-top
      if not _WORKDIR.value:
        _usage_error(f"export needs --workdir: {COMMANDS['export']}")
      export.export_command(_WORKDIR.value, _STEP.value, _FORMAT.value, _OUT.value)
    elif command == "sweep":
      from cnn_jax import sweep  # pylint: disable=g-import-not-at-top
      path = _config_path(_original_argv)
      if path is None or not _WORKDIR.value:
        _usage_error(f"sweep needs --config and --workdir: {COMMANDS['sweep']}")
      config = _config()
      sweep.sweep(config, os.path.abspath(_WORKDIR.value),
                  sweep.parse_grid(_SWEEP.value, config), _SEEDS.value,
                  _VMAP_SEEDS.value, train=not _REPORT_ONLY.value)
    elif command == "speedrun":
      import jax  # pylint: disable=g-import-not-at-top
      from cnn_jax import configs  # pylint: disable=g-import-not-at-top
      from cnn_jax import speedrun  # pylint: disable=g-import-not-at-top
      config = _config()
      configs.check(config, jax.device_count(), jax.process_count())
      seeds = _SEEDS.value if flags.FLAGS["seeds"].present else speedrun.DEFAULT_SEEDS
      speedrun.check(config, seeds)
      lengths = speedrun.parse_epochs(_EPOCHS.value) if _EPOCHS.value else [
          config.num_epochs]
      # The runs get the overrides given here, less those the speedrun sets itself.
      overrides = [a for a in _original_argv if a.startswith("--config.") and not
                   a.startswith(("--config.seed=", "--config.num_epochs="))]
      speedrun.speedrun(_config_path(sys.argv), _WORKDIR.value or SPEEDRUN_WORKDIR,
                        seeds, lengths, overrides)
    else:  # prepare (_check_command let nothing else through).
      from cnn_jax import prepare  # pylint: disable=g-import-not-at-top
      prepare.prepare_command(args[0], _FROM.value, _DATA_DIR.value)
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


def _check_command(command, args) -> None:
  """A missing or unknown command, or arguments a command does not take: one line and
  exit 2, before anything is imported or touched."""
  if command is None or command in ("help", "--help"):
    print(USAGE, file=sys.stderr)
    sys.exit(0 if command else 2)
  if command not in COMMANDS:
    close = difflib.get_close_matches(command, COMMANDS, n=1)
    _usage_error(f"unknown command {command!r}" +
                 (f"; did you mean {close[0]!r}?" if close else ".") +
                 f" Commands: {', '.join(COMMANDS)} (./run.sh alone trains the "
                 "tutorial; ./run.sh help shows each one's flags).")
  takes = {"report": None, "predict": None, "prepare": 1}.get(command, 0)
  if takes is not None and len(args) != takes:
    extra = f"got {' '.join(map(repr, args))}" if args else "got none"
    _usage_error(f"{command} takes {takes or 'no'} argument{'s' * (takes != 1)} besides "
                 f"flags ({extra}; a flag needs its --): {COMMANDS[command]}")


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
  config_path = _config_path(argv)
  if config_path is not None and not os.path.isfile(config_path):
    _usage_error(f"--config {config_path}: no such file (relative paths are read from "
                 f"{os.getcwd()}).")
  if len(argv) > 1 and argv[1] == "speedrun" and config_path is None:
    config_path = SPEEDRUN_CONFIG
    argv = sys.argv[:] = [*argv[:2], f"--config={config_path}", *argv[2:]]
  _original_argv[:] = sys.argv
  # ml_collections reads its overrides from sys.argv itself.
  argv = sys.argv[:] = _take_kwargs_overrides(argv)
  try:
    return flags.FLAGS(argv)
  except Exception as e:  # pylint: disable=broad-except
    problem = _config_file_problem(config_path, e)
    if problem:
      _usage_error(problem)
    if isinstance(e, flags.Error):
      message = str(e).strip().splitlines()[-1]
    elif isinstance(e, (AttributeError, KeyError)):
      # ml_collections: a chain of Attribute and KeyErrors, quoted at each level; or
      # overrides of a config that is no ConfigDict.
      _check_config_type(config_path, runpy.run_path(config_path)["get_config"]())
      message = _unknown_field_message(argv, e)
    else:
      raise  # A bug: its traceback.
    _usage_error(f"{message} (./run.sh help lists each command's flags; config fields "
                 "are those of cnn_jax/schema.py)")


def _config_file_problem(path: str | None, error: BaseException) -> str | None:
  """One line for an experiment file that cannot give a config (not Python, failing
  on its own lines, no get_config, not a ConfigDict); None for other errors."""
  if path is None:
    return None
  fix = ("an experiment file is Python whose get_config() returns an "
         "ml_collections.ConfigDict; start from experiments/seed_cnn.py")
  if "has no attribute 'get_config'" in str(error):
    return f"--config {path}: it defines no get_config() ({fix})."
  target, line = os.path.abspath(path), None
  if isinstance(error, SyntaxError) and error.filename and os.path.abspath(
      error.filename) == target:
    line = error.lineno
  for frame, lineno in traceback.walk_tb(error.__traceback__):
    if os.path.abspath(frame.f_code.co_filename) == target:
      line = lineno
  if line is None:
    return None
  return f"--config {path}, line {line}: {type(error).__name__}: {error} ({fix})."


def _usage_error(message: str):
  print(f"error: {message}", file=sys.stderr)
  sys.exit(2)


def _config_path(argv) -> str | None:
  """The --config file named in `argv` (None: none), less an ml_collections ':args'."""
  for i, a in enumerate(argv):
    if a == "--config" and i + 1 < len(argv):
      path = argv[i + 1]
    elif a.startswith("--config="):
      path = a[len("--config="):]
    else:
      continue
    head = path.rpartition(":")[0]
    return head if head and not os.path.isfile(path) and os.path.isfile(head) else path
  return None


def _take_kwargs_overrides(argv) -> list[str]:
  """argv less its --config.model_kwargs.KEY=VALUE (and optimizer_kwargs) overrides,
  kept in _kwargs_overrides for _config(): ml_collections only overrides keys that
  the experiment lists, and an experiment's model_kwargs is often {}."""
  rest = []
  for a in argv:
    name, sep, value = a.partition("=")
    field, _, key = name[len("--config."):].partition(".")
    if (name.startswith("--config.") and sep and field in _KWARGS_FIELDS and key
        and "." not in key):
      _kwargs_overrides.append((field, key, value))
    else:
      rest.append(a)
  return rest


def _config():
  """The --config experiment with its model_kwargs and optimizer_kwargs overrides: a
  value is read as a Python literal (else a string); a key the experiment lists keeps
  its type."""
  config = _CONFIG.value
  _check_config_type(_config_path(_original_argv), config)
  with config.unlocked():
    for field, key, text in _kwargs_overrides:
      try:
        value = ast.literal_eval(text)
      except (ValueError, SyntaxError):
        value = {"true": True, "false": False}.get(text.lower(), text)
      if isinstance(config[field].get(key), str):
        value = text
      try:
        config[field][key] = value
      except TypeError as e:
        _usage_error(f"--config.{field}.{key}={text}: {e}")
  return config


def _check_config_type(path: str, config) -> None:
  if not isinstance(config, ml_collections.ConfigDict):
    _usage_error(f"--config {path}: get_config() returned a {type(config).__name__}, not "
                 "an ml_collections.ConfigDict (start from experiments/seed_cnn.py).")


def _unknown_field_message(argv, error: BaseException) -> str:
  text, e = "", error
  while e is not None:
    text += " " + str(e)
    e = e.__context__
  text = text.replace("\\n", " ").replace("\\", "")
  overrides = [a.split("=")[0] for a in argv if a.startswith("--config.")]
  for arg in reversed(overrides):
    for part in arg[len("--config."):].split("."):
      if f"'{part}'" in text:
        suggestion = re.search(r'Did you mean "([^"]+)"', text)
        return (f"{arg}: the config has no field {part!r}" +
                (f"; did you mean {suggestion.group(1)!r}?" if suggestion else ""))
  return f"{overrides[-1] if overrides else '--config'}: {text.strip()}"


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
