"""Pure preprocessing of device batches (uint8 images in, float32 out).

Train and eval batches go through the same `preprocess`; augmentation is separate
(`cnn_jax.data.augment`) and runs on training batches only.
"""

import functools
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from cnn_jax.data.tfds_base import DatasetError

Preprocess = Callable[[jax.Array], jax.Array]


def scale_to_unit(images: jax.Array) -> jax.Array:
  """The tutorial's preprocessing: uint8 pixels / 255 as float32 in [0, 1]."""
  return images.astype(jnp.float32) / 255.0


def normalize(images: jax.Array, mean, std) -> jax.Array:
  """(pixels / 255 - mean) / std, with per-channel `mean` and `std` on the [0, 1] scale."""
  return (scale_to_unit(images) - mean) / std


def make_preprocess(mean=None, std=None) -> Preprocess:
  """`scale_to_unit`, or `normalize` with the given per-channel statistics.

  Args:
    mean: per-channel means on the [0, 1] scale, shape [C] (e.g. from
      `channel_stats` of the training split), or None for no normalisation.
    std: per-channel standard deviations, shape [C]; given exactly when `mean` is.
  """
  if (mean is None) != (std is None):
    raise ValueError("make_preprocess needs both mean and std, or neither "
                     f"(got mean={mean!r}, std={std!r}).")
  if mean is None:
    return scale_to_unit
  mean = np.asarray(mean, np.float32)
  std = np.asarray(std, np.float32)
  if mean.shape != std.shape or mean.ndim != 1:
    raise ValueError(f"mean and std must both have shape [channels]; got "
                     f"{mean.shape} and {std.shape}.")
  if not np.all(std > 0):
    raise DatasetError(f"std={std} has a channel with no spread; every pixel of that "
                     "channel is the same, so it cannot be normalised. Turn off "
                     "--config.normalize for this dataset.")
  return functools.partial(normalize, mean=mean, std=std)


def channel_stats(images, chunk: int = 4096) -> tuple[np.ndarray, np.ndarray]:
  """Per-channel mean and standard deviation of uint8 images, on the [0, 1] scale.

  Computed once on the host over a whole split (normally the training split: the
  test split must not leak into preprocessing). Sums are exact integer sums taken a
  chunk of images at a time, so a 60,000-image split needs no float64 copy.

  Args:
    images: uint8 array [N, H, W, C] (numpy, or a fully addressable jax.Array).
    chunk: images per partial sum (bounds host memory).

  Returns:
    (mean, std), float32 arrays of shape [C]; std is the population std (ddof=0).
  """
  return stats_from_sums(*channel_sums(images, chunk))


def channel_sums(images, chunk: int = 4096) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Exact per-channel (sum, sum of squares, count) of uint8 images [N, H, W, C].

  Integer sums, so the shares of several processes add up exactly.
  """
  images = np.asarray(images)
  if images.ndim != 4 or images.dtype != np.uint8 or images.shape[0] == 0:
    raise ValueError("channel_stats expects a non-empty uint8 array [N, H, W, C]; got "
                     f"dtype {images.dtype}, shape {images.shape}.")
  channels = images.shape[-1]
  total = np.zeros(channels, np.int64)
  squares = np.zeros(channels, np.int64)
  for start in range(0, images.shape[0], chunk):
    part = images[start:start + chunk].reshape(-1, channels).astype(np.int64)
    total += part.sum(0)
    squares += (part * part).sum(0)
  return total, squares, np.full(channels, images.size // channels, np.int64)


def stats_from_sums(total, squares, count) -> tuple[np.ndarray, np.ndarray]:
  """(mean, std) on the [0, 1] scale from `channel_sums`."""
  mean = total / count
  var = np.maximum(squares / count - mean * mean, 0.0)
  return (mean / 255.0).astype(np.float32), (np.sqrt(var) / 255.0).astype(np.float32)
