"""Splits that fit: loaded once onto the devices, batches gathered there by index.

Each process reads only its share of a split (contiguous positions, the first shares
one longer when the split does not divide) and the shares form one global array
sharded over the mesh's data axis. Each share is padded to the same length, so position
i of the split lives at row `rows[i]` of that array. Batches are positions, the same
whatever the number of processes or devices.
"""

import dataclasses
from typing import Iterator

import jax
import numpy as np
from jax.sharding import Mesh

from cnn_jax import mesh as mesh_lib
from cnn_jax.data import batching
from cnn_jax.data.splits import Split


@dataclasses.dataclass(frozen=True)
class DeviceSplit:
  """A whole split on the devices: uint8 images and int32 labels, sharded by rows.

  Attributes:
    images: [R, H, W, C] uint8 global array (R >= num_examples: padded shares).
    labels: [R] int32 global array.
    rows: [num_examples] int32 (host), the row of each position of the split.
  """
  images: jax.Array
  labels: jax.Array
  rows: np.ndarray

  @property
  def num_examples(self) -> int:
    return len(self.rows)

  @property
  def arrays(self) -> dict[str, jax.Array]:
    return {"image": self.images, "label": self.labels}


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


def load_split(split: Split, mesh: Mesh) -> DeviceSplit:
  """Reads this process's share of `split` and places it on the mesh."""
  bounds = batching.share_bounds(len(split), jax.process_count())
  start, end = bounds[jax.process_index()]
  images, labels = split.read(np.arange(start, end))
  return put_split(images, labels.astype(np.int32), mesh, [e - s for s, e in bounds])


class _Epoch(batching.Epoch):
  """Rows of the device-resident train split for each step: nothing to wait for."""

  def __init__(self, split: DeviceSplit, order: np.ndarray, start_step: int):
    super().__init__(start_step)
    self._split, self._order = split, order

  def _take(self, start, end):
    return batching.Chunk(self._split.arrays, self._split.rows[self._order[start:end]])


@dataclasses.dataclass
class DeviceResident(batching.Dataset):
  """A `batching.Dataset` whose named splits all live on the devices."""
  pipeline = "in_memory"
  device_splits: dict[str, DeviceSplit] = dataclasses.field(default_factory=dict)
  _eval_index: dict = dataclasses.field(default_factory=dict, repr=False)

  @classmethod
  def open(cls, splits: dict[str, Split], **kwargs) -> "DeviceResident":
    mesh = kwargs["mesh"]
    return cls(device_splits={k: load_split(s, mesh) for k, s in splits.items()},
               **kwargs)

  def train_epoch(self, epoch, start_step=0):
    return _Epoch(self.device_splits["train"], self.epoch_order(epoch), start_step)

  def eval_chunks(self, split) -> Iterator[batching.Chunk]:
    if split not in self._eval_index:  # On the devices once per run, not every epoch.
      device_split = self.device_splits[split]
      positions, mask = batching.eval_order(device_split.num_examples,
                                            self.eval_split_batch(split))
      self._eval_index[split] = (
          mesh_lib.put_replicated(device_split.rows[positions], self.mesh),
          mesh_lib.put_replicated(mask, self.mesh))
    index, mask = self._eval_index[split]
    yield batching.Chunk(self.device_splits[split].arrays, index, mask)
