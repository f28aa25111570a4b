"""Splits that fit in memory: loaded once, kept on the devices, shuffled by JAX keys."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from cnn_jax import mesh as mesh_lib


@dataclasses.dataclass(frozen=True)
class DeviceSplit:
  """A whole split on the device(s): uint8 images and int32 labels, replicated."""
  images: jax.Array
  labels: jax.Array

  @property
  def num_examples(self) -> int:
    return self.labels.shape[0]


def put_split(images: np.ndarray, labels: np.ndarray, mesh: Mesh) -> DeviceSplit:
  return DeviceSplit(mesh_lib.put_replicated(images, mesh),
                     mesh_lib.put_replicated(labels, mesh))


def epoch_order(key: jax.Array, epoch, num_examples: int, batch_size: int) -> jax.Array:
  """Example indices of one training epoch, shape [steps, batch_size].

  A pure function of (key, epoch): a resumed run sees the same order. The last
  partial batch is dropped; each epoch drops different examples.
  """
  perm = jax.random.permutation(jax.random.fold_in(key, epoch), num_examples)
  steps = num_examples // batch_size
  return perm[: steps * batch_size].reshape(steps, batch_size).astype(jnp.int32)


def eval_order(num_examples: int, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
  """Indices and mask [batches, batch_size] covering every example exactly once.

  The last batch is padded with index 0 and masked out, so no example is dropped and
  every batch has the same shape.
  """
  batches = -(-num_examples // batch_size)
  flat = np.arange(batches * batch_size)
  mask = flat < num_examples
  indices = np.where(mask, flat, 0).astype(np.int32)
  return indices.reshape(batches, batch_size), mask.reshape(batches, batch_size)
