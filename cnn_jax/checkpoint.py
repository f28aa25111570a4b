"""Orbax checkpoints of a run: TrainState plus JSON metadata, latest N and best K kept."""

import os
import shutil
import time

import jax
import orbax.checkpoint as ocp

from cnn_jax.errors import Error


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
      raise ValueError(f"best_mode must be 'max' or 'min', got {best_mode!r}.")
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
    """Starts an asynchronous save of `state` and `meta` at `step`."""
    self._manager.save(
        step,
        args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                meta=ocp.args.JsonSave(meta)),
        metrics=metrics)

  def restore_meta(self, step: int) -> dict:
    """The JSON metadata of `step` alone (cheap: no arrays are read)."""
    out = self._manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
    return dict(out["meta"])

  def restore(self, step: int, target):
    """Returns (state, meta) of `step`, with the structure and shardings of `target`."""
    abstract = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding)
        if isinstance(x, jax.Array) else x, target)
    out = self._manager.restore(
        step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract),
                                      meta=ocp.args.JsonRestore()))
    return out["state"], dict(out["meta"])

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
      try:
        meta = self.restore_meta(step)
      except Exception as e:  # pylint: disable=broad-except
        skipped.append((step, _reason(e)))
        continue
      if check_meta is not None:
        check_meta(meta)
      try:
        state, meta = self.restore(step, target)
      except Exception as e:  # pylint: disable=broad-except
        # Orbax raises ValueError, FileNotFoundError or bare Exception for damage.
        skipped.append((step, _reason(e)))
        continue
      return state, meta, step, skipped
    if skipped:
      raise CheckpointError(
          f"None of the checkpoints in {self.directory} can be restored: " +
          "; ".join(f"step {s}: {r}" for s, r in skipped) +
          ". Move the directory away to start over.")
    return None, None, None, skipped

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
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()


def _reason(error: Exception) -> str:
  text = str(error).strip().splitlines()
  return f"{type(error).__name__}: {text[0][:200] if text else ''}".rstrip(": ")
