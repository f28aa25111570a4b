"""Metrics as (sum, count) pairs: exact over any batching, padding or device count."""

import math

import jax
import numpy as np


def host_value(x) -> np.ndarray:
  """A replicated (possibly multi-process) array's value on this host."""
  if isinstance(x, jax.Array) and not x.is_fully_addressable:
    x = x.addressable_data(0)
  return np.asarray(x)


def summarize(sums, prefix: str) -> dict[str, float]:
  """{'<prefix>_loss', '<prefix>_accuracy'} from summed loss, correct and count."""
  sums = {k: host_value(v) for k, v in sums.items()}
  count = float(sums["count"])
  if count == 0:
    return {f"{prefix}_loss": math.nan, f"{prefix}_accuracy": math.nan}
  return {f"{prefix}_loss": float(sums["loss"]) / count,
          f"{prefix}_accuracy": float(sums["correct"]) / count}


def to_host(sums) -> dict[str, float]:
  """Metric sums as plain floats (for JSON checkpoint metadata)."""
  return {k: float(host_value(v)) for k, v in sums.items()}
