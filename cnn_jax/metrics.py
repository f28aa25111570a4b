"""Metrics as (sum, count) pairs: exact over any batching, padding or device count."""

import math

import jax
import numpy as np


def summarize(sums, prefix: str) -> dict[str, float]:
  """{'<prefix>_loss', '<prefix>_accuracy'} from summed loss, correct and count."""
  sums = jax.device_get(sums)
  count = float(sums["count"])
  if count == 0:
    return {f"{prefix}_loss": math.nan, f"{prefix}_accuracy": math.nan}
  return {f"{prefix}_loss": float(sums["loss"]) / count,
          f"{prefix}_accuracy": float(sums["correct"]) / count}


def to_host(sums) -> dict[str, float]:
  """Metric sums as plain floats (for JSON checkpoint metadata)."""
  return {k: float(np.asarray(v)) for k, v in jax.device_get(sums).items()}
