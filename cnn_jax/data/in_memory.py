"""Splits that fit in memory: loaded once, kept on the devices, shuffled by JAX keys.

Each process reads only its share of a split (`tfds.even_splits(split,
process_count)[process_index]`, as `tfds.split_for_jax_process` does) and the shares
form one global array sharded over the mesh's data axis. Each share is padded to the
same length, so example i of the split lives at row `rows[i]` of that array. Data order
is a permutation of example indices, the same whatever the number of processes or
devices.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from cnn_jax import mesh as mesh_lib


@dataclasses.dataclass(frozen=True)
class DeviceSplit:
  """A whole split on the devices: uint8 images and int32 labels, sharded by rows.

  Attributes:
    images: [R, H, W, C] uint8 global array (R >= num_examples: padded shares).
    labels: [R] int32 global array.
    rows: [num_examples] int32 (host), the row of each example of the split.
  """
  images: jax.Array
  labels: jax.Array
  rows: np.ndarray

  @property
  def num_examples(self) -> int:
    return len(self.rows)


@dataclasses.dataclass(frozen=True)
class InMemoryEpoch:
  """One epoch of a device-resident split, from its order of rows [steps, batch].

  `take(start, end)` gives the `train.train_steps` arguments of steps [start, end), as
  `streaming.TrainEpoch` does for streamed data.
  """
  split: DeviceSplit
  order: np.ndarray
  wait_sec = 0.0  # Nothing to wait for: the split is on the devices already.

  def take(self, start: int, end: int):
    return self.split.images, self.split.labels, self.order[start:end]


def share_layout(share_sizes: list[int], local_devices: int) -> tuple[int, np.ndarray]:
  """(rows per process, row of each example) for process shares of the given sizes."""
  per_process = -(-max(share_sizes) // local_devices) * local_devices
  rows = np.concatenate([p * per_process + np.arange(n) for p, n in enumerate(share_sizes)])
  return per_process, rows.astype(np.int32)


def put_split(images: np.ndarray, labels: np.ndarray, mesh: Mesh,
              share_sizes: list[int] | None = None) -> DeviceSplit:
  """Places this process's share (`images`, `labels`) into a global split on the mesh.

  Args:
    images, labels: this process's share of the split.
    share_sizes: the share size of every process (default: one process, this share).
  """
  share_sizes = share_sizes or [len(labels)]
  per_process, rows = share_layout(share_sizes, jax.local_device_count())
  pad = per_process - len(labels)
  images = np.concatenate([images, np.zeros((pad, *images.shape[1:]), images.dtype)])
  labels = np.concatenate([labels, np.zeros(pad, labels.dtype)])
  sharding = mesh_lib.batch_sharding(mesh)
  total = per_process * len(share_sizes)
  return DeviceSplit(
      jax.make_array_from_process_local_data(sharding, images, (total, *images.shape[1:])),
      jax.make_array_from_process_local_data(sharding, labels, (total,)),
      rows)


def epoch_order(key: jax.Array, epoch, rows: jax.Array, batch_size: int) -> jax.Array:
  """Rows of one training epoch's batches, shape [steps, batch_size].

  A pure function of (key, epoch): a resumed run sees the same order. The last
  partial batch is dropped; each epoch drops different examples.
  """
  num_examples = rows.shape[0]
  perm = jax.random.permutation(jax.random.fold_in(key, epoch), num_examples)
  steps = num_examples // batch_size
  return rows[perm[: steps * batch_size]].reshape(steps, batch_size).astype(jnp.int32)


def eval_order(num_examples: int, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
  """Example indices and mask [batches, batch_size] covering every example once.

  The last batch is padded with index 0 and masked out, so no example is dropped and
  every batch has the same shape.
  """
  batches = -(-num_examples // batch_size)
  flat = np.arange(batches * batch_size)
  mask = flat < num_examples
  indices = np.where(mask, flat, 0).astype(np.int32)
  return indices.reshape(batches, batch_size), mask.reshape(batches, batch_size)
