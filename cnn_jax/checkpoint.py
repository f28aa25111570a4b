"""Orbax checkpoints of a run: TrainState plus JSON metadata, latest N and best K kept."""

import os

import jax
import orbax.checkpoint as ocp
from absl import logging


class CheckpointError(RuntimeError):
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
      (epoch ends) compete.
    best_mode: 'max' or 'min'.
  """

  def __init__(self, directory: str, keep_latest: int = 2, keep_best: int = 1,
               best_metric: str = "test_accuracy", best_mode: str = "max"):
    if best_mode not in ("max", "min"):
      raise ValueError(f"best_mode must be 'max' or 'min', got {best_mode!r}.")
    self.directory = os.path.abspath(directory)
    metric = lambda m: m[best_metric]
    policies = [ocp.checkpoint_managers.LatestN(n=keep_latest)]
    if keep_best:
      policies.append(ocp.checkpoint_managers.BestN(
          get_metric_fn=metric, reverse=best_mode == "min", n=keep_best,
          keep_checkpoints_without_metrics=False))
    options = ocp.CheckpointManagerOptions(
        best_fn=metric, best_mode=best_mode,
        preservation_policy=ocp.checkpoint_managers.AnyPreservationPolicy(policies),
        enable_async_checkpointing=True)
    self._manager = ocp.CheckpointManager(
        self.directory, options=options, item_names=("state", "meta"))

  def all_steps(self) -> list[int]:
    return sorted(self._manager.all_steps())

  def latest_step(self) -> int | None:
    steps = self.all_steps()
    return steps[-1] if steps else None

  def best_step(self) -> int | None:
    return self._manager.best_step()

  def save(self, step: int, state, meta: dict, metrics: dict | None = None) -> None:
    """Starts an asynchronous save of `state` and `meta` at `step`."""
    self._manager.save(
        step,
        args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                meta=ocp.args.JsonSave(meta)),
        metrics=metrics)

  def restore(self, step: int, target):
    """Returns (state, meta) of `step`, with the structure and shardings of `target`."""
    abstract = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding)
        if isinstance(x, jax.Array) else x, target)
    out = self._manager.restore(
        step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract),
                                      meta=ocp.args.JsonRestore()))
    return out["state"], dict(out["meta"])

  def restore_newest_good(self, target, steps=None):
    """Restores the newest step that loads, walking back over damaged ones.

    Returns:
      (state, meta, step, skipped) where skipped lists (step, reason) of the steps that
      failed to load; (None, None, None, skipped) when there is no step at all.

    Raises:
      CheckpointError: steps exist but none of them loads.
    """
    steps = self.all_steps() if steps is None else steps
    skipped = []
    for step in reversed(steps):
      try:
        state, meta = self.restore(step, target)
        return state, meta, step, skipped
      except Exception as e:  # pylint: disable=broad-except
        # Orbax raises ValueError, FileNotFoundError or bare Exception for damage.
        reason = f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
        logging.warning("Checkpoint step %d in %s is damaged (%s); trying an older one.",
                        step, self.directory, reason)
        skipped.append((step, reason))
    if skipped:
      raise CheckpointError(
          f"None of the checkpoints in {self.directory} can be restored: " +
          "; ".join(f"step {s}: {r}" for s, r in skipped) +
          ". Move the directory away to start over.")
    return None, None, None, skipped

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()
