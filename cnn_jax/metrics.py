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


def per_class(confusion: np.ndarray) -> dict[str, np.ndarray]:
  """Precision, recall and F1 of each class from a confusion matrix [true, predicted].

  A class never predicted has precision 0; one absent from the data has recall 0
  (and F1 0): no division by zero, no NaN in logs.
  """
  confusion = np.asarray(confusion, np.float64)
  hits = np.diag(confusion)
  predicted, actual = confusion.sum(0), confusion.sum(1)
  precision = np.divide(hits, predicted, out=np.zeros_like(hits), where=predicted > 0)
  recall = np.divide(hits, actual, out=np.zeros_like(hits), where=actual > 0)
  both = precision + recall
  f1 = np.divide(2 * precision * recall, both, out=np.zeros_like(hits), where=both > 0)
  return {"precision": precision, "recall": recall, "f1": f1}


def eval_summary(sums, prefix: str, metrics, top_k: int,
                 class_names) -> tuple[dict[str, float], dict]:
  """An evaluation's scalars ('<prefix>_loss', ...) and details (confusion matrix,
  per-class metrics), for the `metrics` asked ('loss', 'accuracy', 'top_k',
  'per_class', 'confusion')."""
  sums = {k: host_value(v) for k, v in sums.items()}
  count = float(sums["count"])
  ratio = lambda x: float(x) / count if count else math.nan
  scalars, details = {}, {"count": int(count)}
  if "loss" in metrics:
    scalars[f"{prefix}_loss"] = ratio(sums["loss"])
  if "accuracy" in metrics:
    scalars[f"{prefix}_accuracy"] = ratio(sums["correct"])
  if "top_k" in metrics:  # With fewer than k classes, every label is in the top k.
    scalars[f"{prefix}_top{top_k}_accuracy"] = ratio(sums["correct_top_k"])
  if "per_class" in metrics:
    classes = per_class(sums["confusion"])
    scalars[f"{prefix}_macro_f1"] = float(classes["f1"].mean())
    details["class_names"] = list(class_names)
    details["per_class"] = {k: v.tolist() for k, v in classes.items()}
  if "confusion" in metrics:
    details["class_names"] = list(class_names)
    details["confusion"] = sums["confusion"].astype(np.int64).tolist()
  return scalars, details
