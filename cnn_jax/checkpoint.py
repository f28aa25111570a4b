"""Orbax checkpoints of a run: TrainState plus JSON metadata, latest N and best K kept."""

import ast
import contextlib
import dataclasses
import json
import os
import shutil
import threading
import time
import zlib

import jax
import orbax.checkpoint as ocp

from cnn_jax import mesh as mesh_lib
from cnn_jax.errors import ConfigError, Error


# In each complete step folder: the size and CRC-32 of its files, to detect silent damage.
CHECKSUM_FILE = "cnn_jax_checksums.json"


class CheckpointError(Error, RuntimeError):
  """No usable checkpoint where one was expected, or one that does not fit the run."""


class Checkpoints:
  """The checkpoints of one workdir.

  Each step holds two items: `state` (the TrainState, restored into a target of the
  same structure and sharding) and `meta` (JSON: epoch, data position, config
  fingerprint, partial epoch metrics). Saving is asynchronous.

  Args:
    directory: where the step folders live.
    keep_latest: how many of the newest checkpoints to keep.
    keep_best: how many of the best checkpoints (by `best_metric`) to keep as well.
    best_metric: metrics key ranking checkpoints; only checkpoints saved with metrics
      (epoch ends) compete. '' keeps the latest checkpoints only.
    best_mode: 'max' or 'min'.
  """

  def __init__(self, directory: str, keep_latest: int = 2, keep_best: int = 1,
               best_metric: str = "", best_mode: str = "max"):
    if best_mode not in ("max", "min"):
      raise ConfigError(f"best_mode must be 'max' or 'min', got {best_mode!r}.")
    self.directory = os.path.abspath(directory)
    policies = [ocp.checkpoint_managers.LatestN(n=keep_latest)]
    best = {}
    if keep_best and best_metric:
      metric = lambda m: m[best_metric]
      policies.append(ocp.checkpoint_managers.BestN(
          get_metric_fn=metric, reverse=best_mode == "min", n=keep_best,
          keep_checkpoints_without_metrics=False))
      best = dict(best_fn=metric, best_mode=best_mode)
    options = ocp.CheckpointManagerOptions(
        **best,
        preservation_policy=ocp.checkpoint_managers.AnyPreservationPolicy(policies),
        enable_async_checkpointing=True,
        # Leftovers of a save cut short are garbage: all_steps() ignores them anyway.
        cleanup_tmp_directories=True)
    self.keeps_best = bool(best)
    self.broken = False  # A save failed: no more saves, nothing to wait for.
    self._in_flight = None  # The step of the last save started.
    self._checksums = None  # The thread recording the last complete save's checksums.
    self._manager = ocp.CheckpointManager(
        self.directory, options=options, item_names=("state", "meta"))

  def all_steps(self) -> list[int]:
    return sorted(self._manager.all_steps())

  def latest_step(self) -> int | None:
    steps = self.all_steps()
    return steps[-1] if steps else None

  def best_step(self) -> int | None:
    """The best step by `best_metric`; None when none is kept (no metric given)."""
    return self._manager.best_step() if self.keeps_best else None

  def resolve(self, step: str) -> int:
    """The step number of 'latest', 'best' or 'N'.

    Raises:
      CheckpointError: no checkpoints, no best one kept, or no such step.
    """
    steps = self.all_steps()
    if not steps:
      raise CheckpointError(f"No checkpoints in {self.directory}.")
    if step == "latest":
      return steps[-1]
    if step == "best":
      if self.best_step() is None:
        raise CheckpointError(
            f"The run in {os.path.dirname(self.directory)} keeps no best checkpoint (its "
            "config has no best_metric); use --step latest or a step number.")
      return self.best_step()
    if not str(step).isdigit() or int(step) not in steps:
      raise CheckpointError(
          f"No checkpoint step {step} in {self.directory}; it has steps "
          f"{', '.join(map(str, steps))} (or use --step latest or best).")
    return int(step)

  def save(self, step: int, state, meta: dict, metrics: dict | None = None) -> None:
    """Starts an asynchronous save of `state` and `meta` at `step`.

    Raises:
      CheckpointError: this save, or the one before it, failed (disk full, folder not
        writable); the earlier complete checkpoints are left as they were.
    """
    with self._failure(step):
      self._finish_in_flight()
      self._manager.save(
          step,
          args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                  meta=ocp.args.JsonSave(meta)),
          metrics=metrics)
    self._in_flight = step

  def _finish_in_flight(self, join: bool = False) -> None:
    """Waits for the save in flight, then records its checksums in the background
    (joined at the next call with `join`, or at the one after): training does not
    wait for a re-read of the checkpoint."""
    self._manager.wait_until_finished()
    if self._checksums is not None:
      self._checksums.join()
      self._checksums = None
    if self._in_flight is not None:
      self._checksums = threading.Thread(target=self.write_checksums,
                                         args=(self._in_flight,), daemon=True)
      self._checksums.start()
      self._in_flight = None
    if join and self._checksums is not None:
      self._checksums.join()
      self._checksums = None

  @contextlib.contextmanager
  def _failure(self, step):
    """Turns a failed save (this one, or the asynchronous one before it, whose error
    surfaces here) into a CheckpointError naming it."""
    if self.broken:
      raise CheckpointError(f"An earlier save in {self.directory} failed; not saving.")
    try:
      yield
    except Exception as e:  # pylint: disable=broad-except
      # Orbax raises OSError, ValueError or bare Exception from its writer threads.
      self.broken = True
      failed = sorted({s for s in (self._in_flight, step) if s is not None})
      complete = [s for s in self._manager.all_steps() if s not in failed]
      raise CheckpointError(
          f"Saving checkpoint step {' or '.join(map(str, failed))} in {self.directory} "
          f"failed ({_reason(e)}). "
          f"The complete checkpoints ({', '.join(map(str, complete)) or 'none'}) are "
          "unchanged; free space or fix the folder, then run the same command again to "
          "resume from the newest.") from e

  def restore_meta(self, step: int) -> dict:
    """The JSON metadata of `step` alone (cheap: no arrays are read)."""
    out = self._manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
    return dict(out["meta"])

  def restore(self, step: int, target):
    """Returns (state, meta) of `step`, with the structure and shardings of `target`."""
    abstract = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding)
        if isinstance(x, jax.Array) else x, target)
    restore = lambda item: self._manager.restore(
        step, args=ocp.args.Composite(state=ocp.args.StandardRestore(item),
                                      meta=ocp.args.JsonRestore()))
    try:
      out = restore(abstract)
    except ValueError:
      # Checkpoints from before a state field was added (ema_params) lack its key:
      # restore the fields they have; the missing ones are None in `target` too.
      fields = {f.name: getattr(abstract, f.name) for f in dataclasses.fields(abstract)
                if f.metadata.get("pytree_node", True)}
      on_disk = self._saved_fields(step)
      present = {k: v for k, v in fields.items() if k in on_disk}
      if present == fields or any(v is not None for k, v in fields.items()
                                  if k not in on_disk):
        raise
      out = restore(present)
      out = {"state": abstract.replace(**out["state"]), "meta": out["meta"]}
    return out["state"], dict(out["meta"])

  def _saved_fields(self, step: int) -> set[str]:
    """The top-level fields of the state saved at `step` (from Orbax's _METADATA)."""
    path = os.path.join(self.directory, str(step), "state", "_METADATA")
    with open(path) as f:
      keys = json.load(f)["tree_metadata"]
    return {ast.literal_eval(k)[0] for k in keys}

  def restore_newest_good(self, target, check_meta=None):
    """Restores the newest step that loads, walking back over damaged ones.

    Args:
      target: a state of the structure and shardings to restore into.
      check_meta: called with each candidate's metadata before its arrays are read;
        it raises (e.g. CheckpointError for a checkpoint of another experiment) to
        refuse the checkpoint. Its errors propagate: they are not damage.

    Returns:
      (state, meta, step, skipped) where skipped lists (step, reason) of the steps that
      failed to load; (None, None, None, []) when there is no step at all.

    Raises:
      CheckpointError: steps exist but none of them loads.
    """
    skipped = []
    for step in reversed(self.all_steps()):
      # Every process reaches the same verdict on every step (else they would part
      # ways: one restoring, one moving the step aside), so each is agreed on.
      reason = None
      try:
        self.verify(step)
        meta = self.restore_meta(step)
      except Exception as e:  # pylint: disable=broad-except
        reason = _reason(e)
      if not mesh_lib.all_processes(reason is None):
        skipped.append((step, reason or "damaged in another process"))
        continue
      if check_meta is not None:
        check_meta(meta)
      try:
        state, meta = self.restore(step, target)
      except Exception as e:  # pylint: disable=broad-except
        # Orbax raises ValueError, FileNotFoundError or bare Exception for damage.
        reason = _reason(e)
      if not mesh_lib.all_processes(reason is None):
        skipped.append((step, reason or "damaged in another process"))
        continue
      return state, meta, step, skipped
    if skipped:
      raise CheckpointError(
          f"None of the checkpoints in {self.directory} can be restored: " +
          "; ".join(f"step {s}: {r}" for s, r in skipped) +
          ". Move the directory away to start over.")
    return None, None, None, skipped

  def write_checksums(self, step: int) -> None:
    """Records the size and CRC-32 of every file of a complete step (process 0)."""
    directory = os.path.join(self.directory, str(step))
    if jax.process_index() != 0 or not os.path.isdir(directory):
      return
    sums = {rel: _crc(os.path.join(directory, rel)) for rel in _files(directory)
            if rel != CHECKSUM_FILE}
    tmp = os.path.join(directory, CHECKSUM_FILE + ".tmp")
    with open(tmp, "w") as f:
      json.dump(sums, f)
    os.replace(tmp, os.path.join(directory, CHECKSUM_FILE))

  def verify(self, step: int) -> None:
    """Raises CheckpointError when a file of `step` differs from when it was saved.

    Steps without a checksum file (saved before checksums, or cut short between the
    save and the checksums) are not checked.
    """
    directory = os.path.join(self.directory, str(step))
    path = os.path.join(directory, CHECKSUM_FILE)
    if not os.path.exists(path):
      return
    with open(path) as f:
      expected = json.load(f)
    for rel, (size, crc) in expected.items():
      full = os.path.join(directory, rel)
      if not os.path.exists(full):
        raise CheckpointError(f"file {rel} is missing")
      if list(_crc(full)) != [size, crc]:
        raise CheckpointError(f"file {rel} changed since it was saved (checksum)")

  def set_aside(self, step: int) -> str:
    """Moves a damaged step out of the way of new saves; returns where it went.

    Nothing is deleted: the folder goes to `<directory>_damaged/<step>-<time>`.
    """
    target = os.path.join(self.directory + "_damaged", f"{step}-{int(time.time())}")
    if jax.process_index() == 0:
      os.makedirs(os.path.dirname(target), exist_ok=True)
      shutil.move(os.path.join(self.directory, str(step)), target)
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
      multihost_utils.sync_global_devices(f"set aside step {step}")
    self._manager.reload()
    return target

  def wait(self) -> None:
    """Waits for the asynchronous save in flight (CheckpointError if it failed)."""
    with self._failure(None):
      self._finish_in_flight(join=True)

  def close(self) -> None:
    """Finishes the save in flight and closes. After a failed save, Orbax's writer
    threads can wait forever for it: they are left alone (the command line exits
    without joining them)."""
    if self.broken:
      return
    self.wait()
    self._manager.close()


def _files(directory: str) -> list[str]:
  return sorted(os.path.relpath(os.path.join(d, f), directory)
                for d, _, files in os.walk(directory) for f in files)


def _crc(path: str) -> tuple[int, int]:
  """(size, CRC-32) of a file, read in 1 MiB blocks."""
  crc, size = 0, 0
  with open(path, "rb") as f:
    while block := f.read(1 << 20):
      crc, size = zlib.crc32(block, crc), size + len(block)
  return size, crc


def _reason(error: Exception) -> str:
  text = str(error).strip().splitlines()
  return f"{type(error).__name__}: {text[0][:200] if text else ''}".rstrip(": ")
