"""The one interface between data and the training loop: a `Dataset` hands out `Chunk`s.

Whatever the pipeline, the loop sees the same thing:
- `dataset.info`: name, image shape, class names and the size of every named split;
- `dataset.train_epoch(epoch, start_step)`: the training batches of an epoch, from a
  step on, handed out a dispatch at a time (`take(start, end) -> Chunk`); a pure
  function of (seed, epoch), so a resumed run sees the same batches;
- `dataset.eval_chunks(split)`: padded, masked batches covering a named split once.

A `Chunk` is a set of device arrays and, for each step of the dispatch, the rows of
those arrays that form its batch (`index` [steps, batch]) and which of them count
(`mask`). `train.train_steps` and `train.evaluate` gather each batch inside their
`lax.scan`, so a device-resident split is never copied per step, and a streamed chunk
is just a small set of arrays gathered the same way.

Orders are over *positions* of a named split (0..n-1): each pipeline maps a position to
where the example lives (a device row, or a record to read).
"""

import abc
import dataclasses
import functools
from typing import ClassVar, Iterator

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from cnn_jax import mesh as mesh_lib
from cnn_jax.data.source import DatasetInfo
from cnn_jax.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class Chunk:
  """The batches of one dispatch.

  Attributes:
    arrays: {"image": uint8 [R, H, W, C], "label": int32 [R]}, rows sharded on the mesh.
    index: int32 [steps, batch]: rows of `arrays` forming each step's batch.
    mask: bool [steps, batch]: which entries count (False: padding); None when all do.
  """
  arrays: dict[str, jax.Array]
  index: np.ndarray | jax.Array
  mask: np.ndarray | jax.Array | None = None


class Epoch(abc.ABC):
  """One epoch of training batches; `take` calls follow each other without gaps."""

  def __init__(self, start_step: int):
    self.position = start_step
    self.wait_sec = 0.0  # Time the loop spent blocked on input.

  def take(self, start: int, end: int) -> Chunk:
    """The batches of steps [start, end) of the epoch."""
    if start != self.position or end <= start:
      raise ValueError(f"Epoch.take({start}, {end}) after step {self.position}: steps "
                       "must be taken in order, without gaps.")
    self.position = end
    return self._take(start, end)

  @abc.abstractmethod
  def _take(self, start: int, end: int) -> Chunk:
    ...


@dataclasses.dataclass
class Dataset(abc.ABC):
  """A dataset opened for a mesh (see the module docstring).

  Attributes:
    info: what the model and the loop need to know, with the size of each named split.
    mesh: the devices the batches go to.
    data_key: the run's data key; epoch orders derive from it.
    batch_size: global training batch size.
    eval_batch_size: global evaluation batch size.
    channel_stats: (mean, std) per channel of the train split, or None.
  """
  info: DatasetInfo
  mesh: Mesh
  data_key: jax.Array
  batch_size: int
  eval_batch_size: int
  channel_stats: tuple[np.ndarray, np.ndarray] | None
  pipeline: ClassVar[str]  # Its name in config.input_pipeline.

  @property
  def steps_per_epoch(self) -> int:
    """Full training batches per epoch (the last partial batch is dropped)."""
    return self.info.splits["train"] // self.batch_size

  def epoch_order(self, epoch: int) -> np.ndarray:
    """Positions of the train split forming each batch of `epoch` [steps, batch]."""
    return epoch_order(self.data_key, epoch, self.info.splits["train"], self.batch_size)

  def eval_split_batch(self, split: str) -> int:
    """The eval batch size for `split`: at most the split, rounded up to the devices."""
    devices = self.mesh.devices.size
    return min(self.eval_batch_size, -(-self.info.splits[split] // devices) * devices)

  @abc.abstractmethod
  def train_epoch(self, epoch: int, start_step: int = 0) -> Epoch:
    """The training batches of `epoch`, from `start_step` on."""

  @abc.abstractmethod
  def eval_chunks(self, split: str) -> Iterator[Chunk]:
    """Chunks of padded batches with a mask, covering every example of `split` once."""


@functools.partial(jax.jit, static_argnums=(2, 3))
def _permuted_batches(key, epoch, num_examples: int, batch_size: int) -> jax.Array:
  perm = jax.random.permutation(jax.random.fold_in(key, epoch), num_examples)
  steps = num_examples // batch_size
  return perm[: steps * batch_size].reshape(steps, batch_size)


def epoch_order(key: jax.Array, epoch: int, num_examples: int,
                batch_size: int) -> np.ndarray:
  """Positions [steps, batch_size] of one training epoch's batches, on the host.

  A pure function of (key, epoch), computed on the CPU so it is the same on every
  backend and process. The last partial batch is dropped; each epoch drops different
  examples.
  """
  with jax.default_device(jax.local_devices(backend="cpu")[0]):
    return np.asarray(_permuted_batches(key, epoch, num_examples, batch_size), np.int32)


def eval_order(num_examples: int, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
  """Positions and mask [batches, batch_size] covering every example exactly once.

  The last batch is padded with position 0 and masked out, so no example is dropped and
  every batch has the same shape.
  """
  batches = -(-num_examples // batch_size)
  flat = np.arange(batches * batch_size)
  mask = flat < num_examples
  positions = np.where(mask, flat, 0).astype(np.int32)
  return positions.reshape(batches, batch_size), mask.reshape(batches, batch_size)


def share_bounds(num_examples: int, process_count: int) -> list[tuple[int, int]]:
  """Contiguous [start, end) of each process's share; the first get the remainder."""
  sizes = [num_examples // process_count + (i < num_examples % process_count)
           for i in range(process_count)]
  ends = np.cumsum(sizes).tolist()
  return [(end - size, end) for size, end in zip(sizes, ends)]


def local_batch_size(global_batch: int, process_count: int | None = None) -> int:
  """This process's part of a global batch."""
  process_count = jax.process_count() if process_count is None else process_count
  if global_batch % process_count:
    raise ConfigError(f"Batch size {global_batch} is not divisible by the "
                     f"{process_count} processes; use a multiple of {process_count}.")
  return global_batch // process_count


def to_global(local: np.ndarray, mesh: Mesh) -> jax.Array:
  """A global array, rows split over the data axis, from this process's rows.

  Every process passes its local rows; the global array is their concatenation in
  process order.
  """
  global_shape = (local.shape[0] * jax.process_count(), *local.shape[1:])
  return jax.make_array_from_process_local_data(
      NamedSharding(mesh, P(mesh_lib.DATA_AXIS)), local, global_shape)
