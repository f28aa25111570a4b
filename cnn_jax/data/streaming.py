"""Splits that do not fit in memory: a tf.data pipeline from TFDS onto the mesh.

Every process reads its own share of a split (`tfds.split_for_jax_process`) and puts
its local batches onto the mesh as global arrays, batch dimension sharded on the data
axis. An epoch's order is a pure function of (seed, epoch): seeded file shuffling and
a seeded shuffle buffer, read deterministically. A run resumed at step s of an epoch
skips s batches' worth of examples (still encoded, so skipping is cheap) and sees the
same batches as an uninterrupted run.

Images stay uint8: augmentation and preprocessing run on device in the train step.
"""

import dataclasses
import time
from typing import Any, Iterator

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from cnn_jax import mesh as mesh_lib
from cnn_jax.data import preprocess, source
from cnn_jax.data.source import DatasetError, DatasetInfo

PIPELINES = ("in_memory", "streaming", "auto")


def decoded_bytes(builder, split: str) -> int:
  """Bytes of `split` decoded to uint8 arrays: examples * H * W * C (from metadata)."""
  shape = source.dataset_info(builder).image_shape
  return builder.info.splits[split].num_examples * int(np.prod(shape))


def choose_pipeline(config, builder=None) -> str:
  """'in_memory' or 'streaming' for `config.input_pipeline` ('auto' decides by size).

  'auto' keeps the training split in memory when its decoded size is at most
  `config.in_memory_max_bytes`, and streams it otherwise.

  Args:
    config: the experiment config.
    builder: the dataset's prepared TFDS builder (default: prepared from the config).
  """
  choice = config.input_pipeline
  if choice not in PIPELINES:
    raise ValueError(f"config.input_pipeline={choice!r} is not one of "
                     f"{', '.join(PIPELINES)}; use e.g. --config.input_pipeline=auto.")
  if choice != "auto":
    return choice
  if builder is None:
    from cnn_jax import data as data_lib  # pylint: disable=g-import-not-at-top
    builder = data_lib.prepared_builder(config)
  size = decoded_bytes(builder, config.train_split)
  return "in_memory" if size <= config.in_memory_max_bytes else "streaming"


def epoch_seeds(seed: int, epoch: int) -> tuple[int, int]:
  """(file shuffle seed, example shuffle seed) of `epoch`: a pure function of both."""
  files, examples = np.random.SeedSequence([seed % (1 << 64), epoch]).generate_state(2)
  return int(files), int(examples)


def local_batch_size(global_batch: int, process_count: int | None = None) -> int:
  """This process's part of a global batch."""
  process_count = jax.process_count() if process_count is None else process_count
  if global_batch % process_count:
    raise ValueError(f"Batch size {global_batch} is not divisible by the "
                     f"{process_count} processes; use a multiple of {process_count}.")
  return global_batch // process_count


def _tf_options():
  tf = source.tensorflow()
  options = tf.data.Options()
  options.deterministic = True
  return options


def _read(builder, split, *, shuffle_seed: int | None, options):
  """(encoded image, label) pairs of `split`; images are decoded later by `_decode`."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  image_key = builder.info.supervised_keys[0]  # Checked by source.dataset_info.
  read_config = tfds.ReadConfig(shuffle_seed=shuffle_seed, try_autocache=False,
                                options=options)
  return builder.as_dataset(
      split=split, as_supervised=True, shuffle_files=shuffle_seed is not None,
      read_config=read_config, decoders={image_key: tfds.decode.SkipDecoding()})


def _decode(builder):
  """A tf.data map function: (encoded image, label) -> (uint8 image, int32 label)."""
  tf = source.tensorflow()
  image_key = builder.info.supervised_keys[0]  # Checked by source.dataset_info.
  feature = builder.info.features[image_key]

  def decode(image, label):
    return tf.cast(feature.decode_example(image), tf.uint8), tf.cast(label, tf.int32)
  return decode


def train_dataset(builder, split: str, *, seed: int, epoch: int, local_batch: int,
                  shuffle_buffer: int, start_step: int = 0, process_index=None,
                  process_count=None):
  """This process's training batches of `epoch`, from step `start_step` on.

  Deterministic in (seed, epoch): the same arguments give the same batches, run after
  run. Shares of the processes are equal (the remainder is dropped), so every process
  runs the same number of steps.

  Returns:
    A tf.data.Dataset of (images uint8 [local_batch, H, W, C], labels int32
    [local_batch]).
  """
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  tf = source.tensorflow()
  share = tfds.split_for_jax_process(split, process_index=process_index,
                                     process_count=process_count, drop_remainder=True)
  file_seed, shuffle_seed = epoch_seeds(seed, epoch)
  options = _tf_options()
  ds = _read(builder, share, shuffle_seed=file_seed, options=options)
  if shuffle_buffer > 1:
    ds = ds.shuffle(shuffle_buffer, seed=shuffle_seed, reshuffle_each_iteration=False)
  # Skipped before decoding: a resumed run pays for reading only, not decoding.
  ds = ds.skip(start_step * local_batch)
  ds = ds.map(_decode(builder), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  ds = ds.batch(local_batch, drop_remainder=True)
  return ds.prefetch(tf.data.AUTOTUNE).with_options(options)


def share_sizes(builder, split: str, process_count: int) -> list[int]:
  """Examples in each process's share of `split` (the first get the remainder)."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  return [builder.info.splits[tfds.split_for_jax_process(
      split, process_index=i, process_count=process_count)].num_examples
          for i in range(process_count)]


def eval_dataset(builder, split: str, *, local_batch: int, process_index=None,
                 process_count=None):
  """This process's share of `split` in padded batches with a validity mask.

  Every example of the split is in exactly one process's share, once. Each process
  yields the same number of batches (that of the largest share); the last ones are
  padded with zero images and masked out.

  Returns:
    A tf.data.Dataset of (images uint8 [local_batch, H, W, C], labels int32
    [local_batch], mask bool [local_batch]).
  """
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  tf = source.tensorflow()
  process_index = jax.process_index() if process_index is None else process_index
  process_count = jax.process_count() if process_count is None else process_count
  shares = share_sizes(builder, split, process_count)
  num_batches = -(-max(shares) // local_batch)
  padding = num_batches * local_batch - shares[process_index]
  options = _tf_options()
  share = tfds.split_for_jax_process(split, process_index=process_index,
                                     process_count=process_count)
  ds = _read(builder, share, shuffle_seed=None, options=options)
  ds = ds.map(_decode(builder), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  ds = ds.map(lambda image, label: (image, label, True))
  shape = source.dataset_info(builder).image_shape
  pad = tf.data.Dataset.from_tensors(
      (tf.zeros(shape, tf.uint8), tf.constant(0, tf.int32), False)).repeat(padding)
  ds = ds.concatenate(pad).batch(local_batch, drop_remainder=True)
  return ds.prefetch(tf.data.AUTOTUNE).with_options(options)


def to_global(local: np.ndarray, mesh: Mesh, batch_axis: int = 0) -> jax.Array:
  """A global array from this process's part, split over the data axis at `batch_axis`.

  Every process passes its local batch; the global batch is their concatenation in
  process order.
  """
  spec = P(*([None] * batch_axis), mesh_lib.DATA_AXIS)
  global_shape = list(local.shape)
  global_shape[batch_axis] *= jax.process_count()
  return jax.make_array_from_process_local_data(NamedSharding(mesh, spec), local,
                                                tuple(global_shape))


class TrainEpoch:
  """One epoch of streamed training batches, handed out a dispatch at a time.

  `take(start, end)` returns the batches of steps [start, end) of the epoch as global
  arrays (images uint8 [K, B, H, W, C], labels int32 [K, B], sharded P(None, 'data')),
  for `train.train_steps_on_batches`. Calls must follow each other without gaps.
  `wait_sec` is the time spent waiting for the host pipeline.
  """

  def __init__(self, dataset, mesh: Mesh, start_step: int):
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
    self._batches = iter(tfds.as_numpy(dataset))
    self._mesh = mesh
    self.position = start_step
    self.wait_sec = 0.0

  def take(self, start: int, end: int) -> tuple[jax.Array, jax.Array]:
    if start != self.position or end <= start:
      raise ValueError(f"TrainEpoch.take({start}, {end}) after step {self.position}: "
                       "steps must be taken in order, without gaps.")
    images, labels = [], []
    t0 = time.perf_counter()
    for _ in range(end - start):
      try:
        x, y = next(self._batches)
      except StopIteration:
        raise DatasetError(
            f"The training stream ended at step {len(images) + start} of the epoch, "
            f"before step {end}; the split has fewer examples than its metadata "
            "says. Re-prepare the dataset.") from None
      images.append(x)
      labels.append(y)
    self.wait_sec += time.perf_counter() - t0
    self.position = end
    return (to_global(np.stack(images), self._mesh, batch_axis=1),
            to_global(np.stack(labels), self._mesh, batch_axis=1))


@dataclasses.dataclass(frozen=True)
class StreamingData:
  """A dataset read from TFDS batch by batch (the `Data` of the streaming pipeline).

  `info.num_train` counts the examples trained on per epoch (the processes' equal
  shares together); `info.num_test` the whole test split.
  """
  info: DatasetInfo
  builder: Any
  mesh: Mesh
  train_split: str
  test_split: str
  batch_size: int
  eval_batch_size: int
  seed: int
  shuffle_buffer: int
  # (mean, std) per channel of the train split when config.normalize, else None.
  channel_stats: tuple[np.ndarray, np.ndarray] | None = None

  def train_epoch(self, epoch: int, start_step: int = 0) -> TrainEpoch:
    """The training batches of `epoch` from step `start_step` on."""
    ds = train_dataset(self.builder, self.train_split, seed=self.seed, epoch=epoch,
                       local_batch=local_batch_size(self.batch_size),
                       shuffle_buffer=self.shuffle_buffer, start_step=start_step)
    return TrainEpoch(ds, self.mesh, start_step)

  def eval_batches(self) -> Iterator[tuple[jax.Array, jax.Array, jax.Array]]:
    """Global (images [1, B, ...], labels [1, B], mask [1, B]) covering the test split.

    Every test example appears exactly once with mask True; every process yields the
    same number of batches.
    """
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
    ds = eval_dataset(self.builder, self.test_split,
                      local_batch=local_batch_size(self.eval_batch_size))
    for batch in tfds.as_numpy(ds):
      yield tuple(to_global(x[None], self.mesh, batch_axis=1) for x in batch)


def load(config, mesh: Mesh, builder=None) -> StreamingData:
  """Opens `config.dataset` for streaming onto `mesh` (prepares it first if needed)."""
  from cnn_jax import data as data_lib  # pylint: disable=g-import-not-at-top
  builder = builder or data_lib.prepared_builder(config)
  info = source.dataset_info(builder)
  process_count = jax.process_count()
  train_shares = share_sizes(builder, config.train_split, process_count)
  num_test = sum(share_sizes(builder, config.test_split, process_count))
  if not num_test:
    raise DatasetError(f"Split {config.test_split!r} of {builder.name!r} is empty.")
  info = dataclasses.replace(info, num_train=min(train_shares) * process_count,
                             num_test=num_test)
  devices = mesh.devices.size
  eval_batch = min(config.eval_batch_size, -(-num_test // devices) * devices)
  stats = channel_stats(builder, config.train_split) if config.normalize else None
  return StreamingData(info=info, builder=builder, mesh=mesh,
                       train_split=config.train_split, test_split=config.test_split,
                       batch_size=config.batch_size, eval_batch_size=eval_batch,
                       seed=config.seed, shuffle_buffer=config.shuffle_buffer,
                       channel_stats=stats)


def channel_stats(builder, split: str, chunk: int = 1024):
  """Per-channel (mean, std) of `split`, streamed on the host, equal in every process.

  Like `preprocess.channel_stats` (exact integer sums, population std, [0, 1] scale),
  but reading chunk by chunk: each process sums its share, and the sums are added up
  across processes.
  """
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  tf = source.tensorflow()
  share = tfds.split_for_jax_process(split)
  ds = _read(builder, share, shuffle_seed=None, options=_tf_options())
  ds = ds.map(_decode(builder), num_parallel_calls=tf.data.AUTOTUNE).batch(chunk)
  channels = source.dataset_info(builder).image_shape[-1]
  sums = np.zeros((3, channels), np.int64)  # sum, sum of squares, count
  for images, _ in tfds.as_numpy(ds):
    part = images.reshape(-1, channels).astype(np.int64)
    sums += np.stack([part.sum(0), (part * part).sum(0), np.full(channels, len(part))])
  if jax.process_count() > 1:
    sums = np.asarray(multihost_utils.process_allgather(sums)).sum(0)
  if not sums[2].all():
    raise DatasetError(f"Split {split!r} of {builder.name!r} is empty.")
  return preprocess.stats_from_sums(*sums)
