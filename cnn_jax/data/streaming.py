"""Splits that do not fit: read batch by batch through Grain, onto the mesh.

The order of an epoch is the same as on the device-resident path (positions from
`batching.epoch_order`, a pure function of seed and epoch). Each global batch is split
between the processes: process p reads columns [p*b, (p+1)*b) of it, so the processes
read disjoint shares that together cover the epoch, whatever their number, and a run
resumed at step s starts reading at batch s.

Reading is a Grain pipeline (`grain.MapDataset` over this process's batches of
positions, read in threads, optionally decoded in worker processes), prefetching
batches while the devices train on the current chunk. Images stay uint8: augmentation
and preprocessing run on the device in the train step.
"""

import dataclasses
import os
import time
from typing import Iterator

import jax
import numpy as np

from cnn_jax.data import batching
from cnn_jax.data.splits import Split

# Evaluation batches per dispatch (the last chunk is padded with masked batches).
EVAL_BATCHES_PER_CHUNK = 8
_MAX_READ_THREADS = 16


class ReadExamples:
  """Grain map function: positions -> those examples of the split (picklable)."""

  def __init__(self, split: Split):
    self.split = split

  def __call__(self, positions: np.ndarray) -> dict[str, np.ndarray]:
    images, labels = self.split.read(positions)
    return {"image": images, "label": labels.astype(np.int32)}


def loader(split: Split, batches: np.ndarray, *, group: int = 1, workers: int = 0,
           prefetch: int = 2) -> Iterator[dict[str, np.ndarray]]:
  """An iterator over the examples of `split` at `batches` (positions [n, b]), in
  order, `group` batches per element (the last group padded with position 0).

  One element per group, not per batch: each read is one vectorised read, and the
  consumer pays Grain's per-element hand-off once per group.

  Args:
    group: batches per element.
    workers: Grain worker processes reading and decoding (0: threads of this process).
    prefetch: elements read ahead of the consumer.
  """
  import grain  # pylint: disable=g-import-not-at-top
  pad = -len(batches) % group
  rows = np.concatenate([batches, np.zeros((pad, batches.shape[1]), batches.dtype)])
  threads = max(1, min(_MAX_READ_THREADS, os.cpu_count() or 1))
  ds = grain.MapDataset.source(rows.reshape(-1, group * batches.shape[1]))
  ds = ds.map(ReadExamples(split)).to_iter_dataset(
      grain.ReadOptions(num_threads=threads, prefetch_buffer_size=max(1, prefetch)))
  if workers:
    from absl import flags  # pylint: disable=g-import-not-at-top
    if not flags.FLAGS.is_parsed():  # Grain's workers read absl flags (library use).
      flags.FLAGS.mark_as_parsed()
    ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=workers))
  return iter(ds)


def chunk_layout(steps: int, local_batch: int, process_count: int) -> np.ndarray:
  """Rows [steps, batch] of each batch in a global chunk array built by `to_global`.

  Process p's rows of step k (its columns [p*b, (p+1)*b) of the batch) sit at rows
  p*steps*b + k*b + j of the global array.
  """
  p, k, j = np.ogrid[:process_count, :steps, :local_batch]
  rows = p * steps * local_batch + k * local_batch + j  # [P, K, b]
  return rows.transpose(1, 0, 2).reshape(steps, process_count * local_batch).astype(
      np.int32)


def local_columns(batches: np.ndarray, process_index: int | None = None,
                  process_count: int | None = None) -> np.ndarray:
  """A process's columns of global batches [n, B] -> [n, B / process_count]."""
  b = batching.local_batch_size(batches.shape[1], process_count)
  p = jax.process_index() if process_index is None else process_index
  return batches[:, p * b:(p + 1) * b]


class _Chunker:
  """Cuts the example stream of a `loader` into global chunks of whole batches."""

  def __init__(self, iterator, mesh, local_batch: int):
    self._iterator, self._mesh, self.local_batch = iterator, mesh, local_batch
    self._pending = {"image": [], "label": []}
    self._available = 0
    self.wait_sec = 0.0

  def next(self, steps: int) -> dict[str, jax.Array]:
    needed = steps * self.local_batch
    t0 = time.perf_counter()
    while self._available < needed:
      element = next(self._iterator)
      for k, parts in self._pending.items():
        parts.append(element[k])
      self._available += len(element["label"])
    self.wait_sec += time.perf_counter() - t0
    out = {}
    for k, parts in self._pending.items():
      joined = parts[0] if len(parts) == 1 else np.concatenate(parts)
      out[k] = batching.to_global(joined[:needed], self._mesh)
      self._pending[k] = [joined[needed:]]
    self._available -= needed
    return out


class _Epoch(batching.Epoch):
  def __init__(self, chunker: _Chunker, start_step: int):
    super().__init__(start_step)
    self._chunker = chunker

  def _take(self, start, end):
    arrays = self._chunker.next(end - start)
    self.wait_sec = self._chunker.wait_sec
    return batching.Chunk(arrays, chunk_layout(end - start, self._chunker.local_batch,
                                               jax.process_count()))


@dataclasses.dataclass
class Streamed(batching.Dataset):
  """A `batching.Dataset` read from its splits chunk by chunk (see the module doc)."""
  pipeline = "streaming"
  splits: dict[str, Split] = dataclasses.field(default_factory=dict)
  workers: int = 0
  group: int = 50  # Batches per read: config.steps_per_dispatch.

  @classmethod
  def open(cls, splits: dict[str, Split], **kwargs) -> "Streamed":
    return cls(splits=splits, **kwargs)

  def _chunker(self, split: str, batches: np.ndarray, group: int) -> _Chunker:
    local = local_columns(batches)
    return _Chunker(loader(self.splits[split], local, group=group, workers=self.workers),
                    self.mesh, local.shape[1])

  def train_epoch(self, epoch, start_step=0):
    order = self.epoch_order(epoch)
    return _Epoch(self._chunker("train", order[start_step:], self.group), start_step)

  def eval_chunks(self, split) -> Iterator[batching.Chunk]:
    positions, mask = batching.eval_order(len(self.splits[split]),
                                          self.eval_split_batch(split))
    steps = min(EVAL_BATCHES_PER_CHUNK, len(positions))
    pad = -len(positions) % steps  # Whole masked batches: every chunk has one shape.
    positions = np.concatenate([positions, np.zeros((pad, positions.shape[1]), np.int32)])
    mask = np.concatenate([mask, np.zeros((pad, mask.shape[1]), bool)])
    chunker = self._chunker(split, positions, steps)
    layout = chunk_layout(steps, chunker.local_batch, jax.process_count())
    for start in range(0, len(positions), steps):
      yield batching.Chunk(chunker.next(steps), layout, mask[start:start + steps])
