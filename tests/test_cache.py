"""Tests of cnn_jax.data.cache: the decoded cache beside a prepared dataset, and reading
damaged ArrayRecord files."""

import os
import shutil

import numpy as np
import pytest

from cnn_jax import data
from cnn_jax.data import cache, source


@pytest.fixture
def prepared(data_dir, tmp_path):
  """A private copy of the prepared mnist_5k, without its cache."""
  copy = tmp_path / "tfds"
  shutil.copytree(data_dir, copy)
  builder = source.prepared_builder("mnist_5k", str(copy))
  shutil.rmtree(os.path.join(builder.data_dir, cache.CACHE_DIR), ignore_errors=True)
  return builder


def cache_files(builder):
  return sorted(os.listdir(os.path.join(builder.data_dir, cache.CACHE_DIR)))


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
