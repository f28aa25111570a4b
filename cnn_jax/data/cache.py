"""Reading the examples of a prepared split: TFDS data sources, and a decoded cache.

A TFDS data source (ArrayRecord, random access) decodes each image when it is read: in
Python, one image at a time (PIL, or OpenCV when installed). For a split whose decoded
images fit in `max_bytes`, `open_base_split` keeps them decoded beside the prepared
dataset, in `<version dir>/decoded/`, as `.npy` files read memory-mapped: written once,
at the first load (or by `./run.sh prepare`), and rebuilt when the prepared files
change. The cache's name holds a hash of the builder's name, config and version and of
each prepared file's name, size and modification time. Labels are always cached: the
validation hold-out reads them.

Once every split of a dataset is cached with its images, `decoded/manifest.json` records
what the pipeline needs of TFDS's metadata (image shape, classes, split sizes) and the
cached splits' hashes. `open_cached` opens such a dataset from its files alone, without
importing TFDS or reading its metadata (about 0.3 s of every run's start-up), when the
hashes recomputed from the files still match; otherwise the caller opens it through TFDS.

Readers are picklable and open their files lazily, so Grain's worker processes can
read through them too.
"""

import abc
import hashlib
import json
import os
import time

import numpy as np

from cnn_jax.data.source import DatasetError, DatasetInfo, dataset_info, supervised_keys
from cnn_jax.data.tfds_base import default_data_dir

CACHE_DIR = "decoded"
MANIFEST = "manifest.json"
_CHUNK = 4096  # Examples decoded per read while filling the cache.


class BaseSplit(abc.ABC):
  """Random access to the examples of one split of a prepared dataset."""

  num_examples: int

  @abc.abstractmethod
  def read(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 [n, H, W, C], labels int32 [n]) of the examples at `indices`."""

  @abc.abstractmethod
  def labels(self) -> np.ndarray:
    """The labels of every example, int32 [num_examples]."""


class SourceSplit(BaseSplit):
  """A split read through its TFDS data source, decoding each image as it is read."""

  def __init__(self, builder, split: str):
    self.builder = builder
    self.split = split
    self.image_key, self.label_key = supervised_keys(builder)
    self._source = None
    self.num_examples = len(self.source)

  def __getstate__(self):
    return {**self.__dict__, "_source": None}  # Each process opens its own readers.

  @property
  def source(self):
    if self._source is None:
      self._source = self.builder.as_data_source(split=self.split)
    return self._source

  def read(self, indices):
    try:
      examples = [self.source[int(i)] for i in indices]
    except Exception as e:  # pylint: disable=broad-except
      # ArrayRecord raises assorted types for damaged files: name them instead.
      raise DatasetError(
          f"Reading split {self.split!r} of {self.builder.name!r} failed in "
          f"{', '.join(shard_files(self.builder, self.split)) or self.builder.data_dir} "
          f"({type(e).__name__}: {str(e).strip().splitlines()[0][:300] if str(e) else ''})"
          ". The prepared files are damaged: delete the dataset's folder "
          f"{self.builder.data_dir} and prepare it again.") from e
    if not examples:
      shape = self.builder.info.features[self.image_key].shape
      return np.zeros((0, *shape), np.uint8), np.zeros(0, np.int32)
    images = np.stack([np.asarray(x[self.image_key], np.uint8) for x in examples])
    labels = np.array([x[self.label_key] for x in examples], np.int32)
    return images, labels

  def labels(self):
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
    source = self.builder.as_data_source(
        split=self.split, decoders={self.image_key: tfds.decode.SkipDecoding()})
    return np.array([source[i][self.label_key] for i in range(len(source))], np.int32)


class CachedSplit(BaseSplit):
  """A split's decoded images and labels in `.npy` files, memory-mapped."""

  def __init__(self, labels_path: str, images_path: str | None = None):
    self.labels_path = labels_path
    self.images_path = images_path
    self._arrays = None
    self.num_examples = len(self._open()[1])

  def __getstate__(self):
    return {**self.__dict__, "_arrays": None}

  def _open(self):
    if self._arrays is None:
      images = None if self.images_path is None else np.load(self.images_path, "r")
      self._arrays = images, np.load(self.labels_path, "r")
    return self._arrays

  def read(self, indices):
    images, labels = self._open()
    indices = np.asarray(indices)
    return np.asarray(images[indices]), np.asarray(labels[indices])

  def labels(self):
    return np.asarray(self._open()[1])


class LabelCachedSplit(SourceSplit):
  """A split read through its data source, with its labels from the cache."""

  def __init__(self, builder, split: str, labels: CachedSplit):
    super().__init__(builder, split)
    self._labels = labels

  def labels(self):
    return self._labels.labels()


def shard_files(builder, split: str) -> list[str]:
  """The prepared files of `split` (every file format), sorted."""
  return _shard_files(os.fspath(builder.data_dir), builder.name, split)


def _shard_files(directory: str, name: str, split: str) -> list[str]:
  if not os.path.isdir(directory):
    return []
  prefix = f"{name}-{split}."
  return sorted(os.path.join(directory, f) for f in os.listdir(directory)
                if f.startswith(prefix))


def _config_name(builder) -> str:
  return builder.builder_config.name if builder.builder_config else ""


def cache_key(builder, split: str) -> str:
  """A hash of what the decoded split depends on (see the module docstring)."""
  return _key(os.fspath(builder.data_dir), builder.name, _config_name(builder),
              str(builder.version), split)


def _key(directory: str, name: str, config: str, version: str, split: str) -> str:
  digest = hashlib.sha1()
  digest.update(f"{name}|{config}|{version}|{split}\n".encode())
  for path in [*_shard_files(directory, name, split),
               os.path.join(directory, "dataset_info.json")]:
    stat = os.stat(path)
    digest.update(f"{os.path.basename(path)}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
  return digest.hexdigest()[:16]


def _paths(directory: str, split: str, key: str) -> tuple[str, str]:
  stem = os.path.join(directory, CACHE_DIR, f"{split}.{key}")
  return f"{stem}.labels.npy", f"{stem}.images.npy"


def open_base_split(builder, split: str, max_bytes: int) -> BaseSplit:
  """Random access to `split`, through the decoded cache when its images fit.

  Builds the cache on first use (a message says so). Where the dataset's folder cannot
  be written, or does not exist (mocked datasets), the split is read uncached.
  """
  if not shard_files(builder, split):
    return SourceSplit(builder, split)
  key = cache_key(builder, split)
  labels_path, images_path = _paths(os.fspath(builder.data_dir), split, key)
  source = SourceSplit(builder, split)
  image_bytes = source.num_examples * int(np.prod(
      builder.info.features[source.image_key].shape))
  cache_images = image_bytes <= max_bytes
  if os.path.exists(labels_path) and (not cache_images or os.path.exists(images_path)):
    labels = CachedSplit(labels_path, images_path if cache_images else None)
  else:
    try:
      labels = _write_cache(source, labels_path, images_path if cache_images else None)
    except OSError as e:
      print(f"Cannot write the decoded cache of {builder.name} {split} in "
            f"{os.path.dirname(labels_path)} ({e.strerror or e}); reading it "
            "undecoded, which is slower.", flush=True)
      return source
  if not cache_images:
    return LabelCachedSplit(builder, split, labels)
  try:
    _record(builder, split, key)
  except OSError:
    pass  # The cache is read all the same; start-up goes through TFDS.
  return labels


def _record(builder, split: str, key: str) -> None:
  """Adds `split` (cached under `key`) to the manifest of the builder's cache."""
  path = os.path.join(os.fspath(builder.data_dir), CACHE_DIR, MANIFEST)
  identity = {"name": builder.name, "config": _config_name(builder),
              "version": str(builder.version)}
  try:
    with open(path) as f:
      manifest = json.load(f)
  except (OSError, ValueError):
    manifest = {}
  if {k: manifest.get(k) for k in identity} != identity:
    info = dataset_info(builder)
    manifest = {**identity, "image_shape": list(info.image_shape),
                "num_classes": info.num_classes, "class_names": list(info.class_names),
                "splits": info.splits, "cached": {}}
  if manifest["cached"].get(split) == key:
    return
  manifest["cached"][split] = key
  tmp = f"{path}.tmp.{os.getpid()}"
  with open(tmp, "w") as f:
    json.dump(manifest, f, indent=1)
  os.replace(tmp, path)


def open_cached(name: str, data_dir: str | None, max_bytes: int):
  """(info, split name -> `CachedSplit`) of dataset `name` read from its decoded cache
  alone (see the module docstring), or None where that cannot be done.

  None unless the dataset has one prepared version in `data_dir` (TFDS's default
  where None), and every one of its splits is cached with images of at most
  `max_bytes`, in the state its prepared files are in now.
  """
  root = os.path.join(os.path.expanduser(data_dir or default_data_dir()), name)
  try:
    versions = [v for v in os.listdir(root) if not v.startswith("incomplete.")
                and os.path.isfile(os.path.join(root, v, "dataset_info.json"))]
  except OSError:
    return None
  if len(versions) != 1:  # Which one TFDS would open is TFDS's to say.
    return None
  directory = os.path.join(root, versions[0])
  try:
    with open(os.path.join(directory, CACHE_DIR, MANIFEST)) as f:
      manifest = json.load(f)
    builder_name, _, config = name.partition("/")
    if ((manifest["name"], manifest["config"], manifest["version"]) !=
        (builder_name, config, versions[0]) or
        set(manifest["cached"]) != set(manifest["splits"])):
      return None
    image_bytes = int(np.prod(manifest["image_shape"]))
    paths = {}
    for split, key in manifest["cached"].items():
      if (manifest["splits"][split] * image_bytes > max_bytes or
          _key(directory, builder_name, config, versions[0], split) != key):
        return None
      paths[split] = _paths(directory, split, key)
      if not all(os.path.exists(p) for p in paths[split]):
        return None
    info = DatasetInfo(name=builder_name, image_shape=tuple(manifest["image_shape"]),
                       num_classes=manifest["num_classes"],
                       class_names=tuple(manifest["class_names"]),
                       splits=dict(manifest["splits"]))
  except (OSError, ValueError, KeyError, TypeError):
    return None
  return info, {split: CachedSplit(*p) for split, p in paths.items()}


def _write_cache(source: SourceSplit, labels_path: str,
                 images_path: str | None) -> CachedSplit:
  """Decodes `source` into the cache files (atomically); returns the cached split."""
  directory = os.path.dirname(labels_path)
  os.makedirs(directory, exist_ok=True)
  split = os.path.basename(labels_path).split(".")[0]
  for stale in os.listdir(directory):  # Caches of earlier states of the files.
    if stale.startswith(f"{split}.") and not labels_path.endswith(stale) and not (
        images_path and images_path.endswith(stale)):
      os.remove(os.path.join(directory, stale))
  t0 = time.perf_counter()
  n, tmp = source.num_examples, f".tmp.{os.getpid()}"
  if images_path is None:
    labels = source.labels()
  else:
    shape = source.builder.info.features[source.image_key].shape
    images = np.lib.format.open_memmap(images_path + tmp, "w+", np.uint8, (n, *shape))
    labels = np.zeros(n, np.int32)
    for start in range(0, n, _CHUNK):
      end = min(n, start + _CHUNK)
      images[start:end], labels[start:end] = source.read(np.arange(start, end))
    images.flush()
    del images
  np.save(labels_path + tmp, labels)
  os.replace(labels_path + tmp + ".npy", labels_path)
  if images_path is not None:
    os.replace(images_path + tmp, images_path)
  what = "labels" if images_path is None else "images and labels"
  print(f"Cached the decoded {what} of {source.builder.name} {source.split} "
        f"({n:,} examples) in {directory} in {time.perf_counter() - t0:.1f} s; later "
        "loads read them directly.", flush=True)
  return CachedSplit(labels_path, images_path)
