"""Tests of cnn_jax.data.cache: the decoded cache beside a prepared dataset, and reading
damaged ArrayRecord files."""

import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from cnn_jax import data
from cnn_jax.data import cache, source
from experiments import seed_cnn


@pytest.fixture
def prepared(data_dir, tmp_path):
  """A private copy of the prepared mnist_5k, without its cache."""
  copy = tmp_path / "tfds"
  shutil.copytree(data_dir, copy)
  builder = source.prepared_builder("mnist_5k", str(copy))
  shutil.rmtree(os.path.join(builder.data_dir, cache.CACHE_DIR), ignore_errors=True)
  return builder


def cache_files(builder):
  """The cached splits' files (not the manifest)."""
  return sorted(n for n in os.listdir(os.path.join(builder.data_dir, cache.CACHE_DIR))
                if n != cache.MANIFEST)


def test_cache_is_written_once_and_equals_the_data_source(prepared, capsys):
  base = cache.open_base_split(prepared, "test", max_bytes=10**9)
  assert "Cached the decoded images and labels of mnist_5k test" in capsys.readouterr().out
  assert isinstance(base, cache.CachedSplit)
  names = cache_files(prepared)
  assert len(names) == 2 and names[0].startswith("test.")
  mtimes = [os.stat(os.path.join(prepared.data_dir, "decoded", n)).st_mtime_ns
            for n in names]
  again = cache.open_base_split(prepared, "test", max_bytes=10**9)
  assert capsys.readouterr().out == ""  # Read back, not rebuilt.
  assert [os.stat(os.path.join(prepared.data_dir, "decoded", n)).st_mtime_ns
          for n in names] == mtimes
  direct = cache.SourceSplit(prepared, "test")
  idx = np.array([999, 0, 512, 3])
  for got, want in zip(again.read(idx), direct.read(idx)):
    np.testing.assert_array_equal(got, want)
  np.testing.assert_array_equal(again.labels(), direct.labels())


def test_cache_is_rebuilt_when_the_prepared_files_change(prepared, capsys):
  cache.open_base_split(prepared, "test", max_bytes=10**9)
  before = cache_files(prepared)
  shard = cache.shard_files(prepared, "test")[0]
  os.utime(shard, ns=(1, 1))  # Same bytes, other modification time: another key.
  cache.open_base_split(prepared, "test", max_bytes=10**9)
  assert "Cached the decoded" in capsys.readouterr().out
  after = cache_files(prepared)
  assert len(after) == 2 and not set(after) & set(before)  # The stale one is gone.


def test_a_split_too_large_caches_its_labels_only(prepared):
  base = cache.open_base_split(prepared, "test", max_bytes=1000 * 784 - 1)
  assert isinstance(base, cache.LabelCachedSplit)
  assert [n.split(".")[-2] for n in cache_files(prepared)] == ["labels"]
  assert len(base.labels()) == 1000
  images, labels = base.read(np.arange(5))
  assert images.shape == (5, 28, 28, 1) and labels.dtype == np.int32


def test_an_unwritable_dataset_folder_is_read_uncached(prepared, capsys, monkeypatch):
  def refuse(*args, **kwargs):
    raise PermissionError(13, "Permission denied")
  monkeypatch.setattr(cache, "_write_cache", refuse)
  base = cache.open_base_split(prepared, "test", max_bytes=10**9)
  assert isinstance(base, cache.SourceSplit)
  assert "Cannot write the decoded cache" in capsys.readouterr().out


def test_a_corrupt_array_record_shard_is_an_error_naming_the_file(prepared):
  shard = [f for f in cache.shard_files(prepared, "train") if "array_record" in f][0]
  size = os.path.getsize(shard)
  with open(shard, "r+b") as f:
    f.seek(size // 2)
    f.write(b"\0" * 2000)
  with pytest.raises(data.DatasetError) as e:
    data.read_split(prepared, "train")
  assert shard in str(e.value) and "damaged" in str(e.value)
  assert "Split spec" not in str(e.value)


def _open_all(builder):
  for split in builder.info.splits:
    cache.open_base_split(builder, split, max_bytes=10**9)


def test_a_fully_cached_dataset_opens_from_its_cache_alone(prepared):
  root = os.path.dirname(os.path.dirname(os.fspath(prepared.data_dir)))
  cache.open_base_split(prepared, "test", max_bytes=10**9)
  assert cache.open_cached("mnist_5k", root, 10**9) is None  # Train not cached yet.
  _open_all(prepared)
  info, bases = cache.open_cached("mnist_5k", root, 10**9)
  assert info == source.dataset_info(prepared)
  assert sorted(bases) == sorted(prepared.info.splits)
  for split, base in bases.items():
    want = cache.open_base_split(prepared, split, max_bytes=10**9)
    idx = np.arange(base.num_examples)
    for got, expected in zip(base.read(idx), want.read(idx)):
      np.testing.assert_array_equal(got, expected)
  # Too large for the caller's budget: its pipeline streams, through TFDS.
  assert cache.open_cached("mnist_5k", root, 784 * 1000) is None


def test_the_cache_alone_is_not_used_once_the_prepared_files_change(prepared):
  root = os.path.dirname(os.path.dirname(os.fspath(prepared.data_dir)))
  _open_all(prepared)
  os.utime(cache.shard_files(prepared, "train")[0], ns=(1, 1))
  assert cache.open_cached("mnist_5k", root, 10**9) is None
  _open_all(prepared)  # Rebuilt, and the manifest with it.
  assert cache.open_cached("mnist_5k", root, 10**9) is not None
  # Two prepared versions: which one to read is TFDS's choice.
  shutil.copytree(prepared.data_dir, os.path.join(root, "mnist_5k", "0.0.1"))
  assert cache.open_cached("mnist_5k", root, 10**9) is None


def test_open_splits_of_a_cached_dataset_imports_no_tfds(prepared, tmp_path):
  _open_all(prepared)
  root = os.path.dirname(os.path.dirname(os.fspath(prepared.data_dir)))
  script = (
      "import sys; from cnn_jax import data; from experiments import seed_cnn\n"
      f"c = seed_cnn.get_config(); c.data_dir = {root!r}; c.validation_fraction = 0.1\n"
      "info, named = data.open_splits(c)\n"
      "print(info.splits, type(named['train'].parts[0][0]).__name__,\n"
      "      'tensorflow_datasets' in sys.modules)\n")
  out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                       check=True, cwd=os.path.dirname(os.path.dirname(__file__)))
  assert out.stdout.split("\n")[-2] == (
      "{'train': 3600, 'test': 1000, 'validation': 400} CachedSplit False"), out.stdout
  config = seed_cnn.get_config()
  config.data_dir, config.validation_fraction = root, 0.1
  _, named = data.open_splits(config)  # The same splits as through TFDS:
  builder_named = data.splits_lib.named_splits(
      config, list(prepared.info.splits), data.open_base_splits(prepared, 10**9))
  for name, split in named.items():
    np.testing.assert_array_equal(split.labels(), builder_named[name].labels())
