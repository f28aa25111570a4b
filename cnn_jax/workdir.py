"""A run's working directory: checked writable before any work, locked while a run uses
it, and the config of every start of the run kept (history is never rewritten)."""

import contextlib
import datetime
import fcntl
import json
import os
import socket
import time

import jax

from cnn_jax import mesh as mesh_lib
from cnn_jax import report as report_lib
from cnn_jax.errors import WorkdirError

LOCK_FILE = ".lock"
STARTS_DIR = "starts"


def not_a_run(path: str) -> str | None:
  """Why `path` is not the workdir of a run (None: it is one): no such path, a file, or
  a folder without config.json, naming the runs it holds (a sweep's) if any."""
  if not os.path.isdir(path):
    why = "it is a file" if os.path.exists(path) else "no such path"
    return f"{path} is not a folder ({why}); give a run's --workdir."
  if os.path.isfile(os.path.join(path, report_lib.CONFIG_FILE)):
    return None
  inside = sorted(os.path.relpath(root, path) for root in _runs_below(path))
  if not inside:
    return (f"{path} is not a run (no {report_lib.CONFIG_FILE}); give the --workdir a "
            "training run wrote.")
  return (f"{path} is not a run (no {report_lib.CONFIG_FILE}); it holds {len(inside)} "
          f"run(s), e.g. {inside[0]}: give one, e.g. --workdir "
          f"{os.path.join(path, inside[0])}")


def _runs_below(folder: str, depth: int = 3) -> list[str]:
  found = []
  for root, dirs, files in os.walk(folder):
    if root[len(folder):].count(os.sep) >= depth:
      dirs[:] = []
    if report_lib.CONFIG_FILE in files and root != folder:
      found.append(root)
      dirs[:] = []  # A run's own subfolders hold no runs.
  return found


def check_writable(*directories: str) -> None:
  """Fails before any work if a directory cannot be created or written."""
  for directory in directories:
    try:
      os.makedirs(directory, exist_ok=True)
      probe = os.path.join(directory, f".write_probe.{os.getpid()}")
      with open(probe, "w") as f:
        f.write("ok")
      os.remove(probe)
    except OSError as e:
      raise WorkdirError(
          f"Workdir {directory!r} cannot be written ({e.strerror or e}). Choose another "
          "--workdir or fix its permissions.") from e


@contextlib.contextmanager
def locked(workdir: str, say=print):
  """Holds `workdir/.lock` (process 0 of a job) while the block runs.

  The lock is an `fcntl.flock` on that file, which the kernel releases when its holder
  dies: a second run is refused at once, naming the holder; a lock file left by a
  process that is gone is simply taken, with a message. Every process of the job
  learns whether process 0 got it.
  """
  holder = None
  if jax.process_index() == 0:
    path = os.path.join(workdir, LOCK_FILE)
    fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o644)
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      holder = _read_holder(fd) or {"pid": "?", "host": "?", "since": time.time()}
      os.close(fd)
    else:
      left = _read_holder(fd)
      if left:
        say(f"taking over the lock of {workdir} left by process {left['pid']} on "
            f"{left['host']}, which is gone")
      os.ftruncate(fd, 0)
      os.pwrite(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                "since": time.time()}).encode(), 0)
  if not mesh_lib.all_processes(holder is None):
    since = datetime.datetime.fromtimestamp(holder["since"]).isoformat(" ", "seconds") \
        if holder else "?"
    raise WorkdirError(
        f"{workdir} is in use by another run" + (
            f": process {holder['pid']} on {holder['host']}, since {since}"
            if holder else " (process 0 of this job could not lock it)") +
        ". Wait for it to end, or stop it.")
  try:
    yield
  finally:
    if jax.process_index() == 0:
      os.ftruncate(fd, 0)  # Released: no holder to name.
      os.close(fd)


def _read_holder(fd: int) -> dict | None:
  try:
    return json.loads(os.pread(fd, 4096, 0).decode() or "null")
  except ValueError:
    return None


def record_start(workdir: str, config, step: int) -> str:
  """Keeps this start's config in `starts/<n>-step<step>.json`; returns the path."""
  if jax.process_index() != 0:
    return ""
  directory = os.path.join(workdir, STARTS_DIR)
  os.makedirs(directory, exist_ok=True)
  n = len([f for f in os.listdir(directory) if f.endswith(".json")])
  path = os.path.join(directory, f"{n}-step{step}.json")
  with open(path, "w") as f:
    json.dump({"started": datetime.datetime.now().isoformat(" ", "seconds"),
               "step": step, "config": json.loads(config.to_json_best_effort())},
              f, indent=2, sort_keys=True)
  return path
