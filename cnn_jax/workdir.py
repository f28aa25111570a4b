"""A run's working directory: checked writable before any work, locked while a run uses
it, and the config of every start of the run kept (history is never rewritten)."""

import contextlib
import datetime
import json
import os
import socket
import time

import jax

from cnn_jax.errors import WorkdirError

LOCK_FILE = ".lock"
STARTS_DIR = "starts"


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


def _alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True
  return True


@contextlib.contextmanager
def locked(workdir: str, say=print):
  """Holds `workdir/.lock` (process 0 of a job) while the block runs.

  A second run in the same workdir is refused at once, naming the holder. A lock left
  by a process that is gone (same host, dead pid) is taken over, with a message.
  """
  if jax.process_index() != 0:
    yield
    return
  path = os.path.join(workdir, LOCK_FILE)
  me = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()}
  for _ in range(3):
    try:
      fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
      try:
        with open(path) as f:
          holder = json.load(f)
      except (OSError, ValueError):
        holder = None  # Being written, or half-written by a process that died.
      if holder and holder.get("host") == me["host"] and not _alive(holder["pid"]):
        say(f"taking over the lock of {workdir} left by process {holder['pid']}, "
            "which is gone")
        with contextlib.suppress(FileNotFoundError):
          os.remove(path)
        continue
      if holder is None:
        time.sleep(0.5)
        continue
      since = datetime.datetime.fromtimestamp(holder["since"]).isoformat(" ", "seconds")
      raise WorkdirError(
          f"{workdir} is in use by another run: process {holder['pid']} on "
          f"{holder['host']}, since {since}. Wait for it to end or stop it; if it is "
          f"gone (another host that crashed), delete {path}.")
    with os.fdopen(fd, "w") as f:
      json.dump(me, f)
    break
  else:
    raise WorkdirError(f"Could not take the lock {path}; delete it if no run uses "
                       f"{workdir}.")
  try:
    yield
  finally:
    with contextlib.suppress(FileNotFoundError):
      os.remove(path)


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
