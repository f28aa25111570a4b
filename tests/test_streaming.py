"""The streaming pipeline: deterministic batches per (seed, epoch), exact resume inside
an epoch, global arrays on the mesh, eval that covers every example once, and whole
runs (accuracy, SIGKILL then resume, bitwise)."""

import collections
import functools
import json
import os
import signal
import subprocess
import sys

import jax
import numpy as np
import pytest

from cnn_jax import mesh as mesh_lib
from cnn_jax import run, train
from cnn_jax.data import preprocess, source, streaming
from tests import test_resume
from tests.test_train import make_state

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def builder(data_dir):
  return source.get_builder("mnist_5k", data_dir)


def epoch_batches(builder, epoch, start_step=0, seed=0, batch=32, split="train"):
  ds = streaming.train_dataset(builder, split, seed=seed, epoch=epoch, local_batch=batch,
                               shuffle_buffer=10_000, start_step=start_step)
  return [(x.copy(), y.copy()) for x, y in ds.as_numpy_iterator()]


def assert_same_batches(a, b):
  assert len(a) == len(b)
  for (xa, ya), (xb, yb) in zip(a, b):
    np.testing.assert_array_equal(xa, xb)
    np.testing.assert_array_equal(ya, yb)


def test_same_seed_and_epoch_give_the_same_batches(builder):
  first = epoch_batches(builder, epoch=0)
  assert len(first) == 4000 // 32
  assert first[0][0].shape == (32, 28, 28, 1) and first[0][0].dtype == np.uint8
  assert first[0][1].shape == (32,) and first[0][1].dtype == np.int32
  assert_same_batches(first, epoch_batches(builder, epoch=0))
  # Every example once per epoch (4000 = 125 * 32: nothing dropped here).
  labels = np.concatenate([y for _, y in first])
  _, all_labels = source.read_split(builder, "train")
  assert collections.Counter(labels) == collections.Counter(all_labels)


def test_epochs_and_seeds_give_different_orders(builder):
  first = np.concatenate([y for _, y in epoch_batches(builder, epoch=0)])
  second = np.concatenate([y for _, y in epoch_batches(builder, epoch=1)])
  other_seed = np.concatenate([y for _, y in epoch_batches(builder, epoch=0, seed=1)])
  assert (first != second).mean() > 0.5
  assert (first != other_seed).mean() > 0.5


def test_resume_at_a_step_sees_the_rest_of_the_uninterrupted_epoch(builder):
  whole = epoch_batches(builder, epoch=2, split="train[:1280]")
  assert len(whole) == 40
  for start in (1, 15, 39):
    assert_same_batches(epoch_batches(builder, epoch=2, start_step=start,
                                      split="train[:1280]"), whole[start:])


def test_train_chunks_are_global_arrays_sharded_on_the_batch_axis(builder):
  mesh = mesh_lib.make_mesh()
  ds = streaming.train_dataset(builder, "train", seed=0, epoch=0, local_batch=32,
                               shuffle_buffer=100)
  epoch = streaming.TrainEpoch(ds, mesh, start_step=0)
  images, labels = epoch.take(0, 5)
  assert images.shape == (5, 32, 28, 28, 1) and images.dtype == np.uint8
  assert labels.shape == (5, 32) and labels.dtype == np.int32
  spec = jax.sharding.PartitionSpec(None, mesh_lib.DATA_AXIS)
  assert images.sharding.spec == labels.sharding.spec == spec
  expected = [y for _, y in ds.take(7).as_numpy_iterator()]
  np.testing.assert_array_equal(epoch.take(5, 7)[1], np.stack(expected[5:7]))
  assert epoch.wait_sec >= 0
  with pytest.raises(ValueError, match="in order, without gaps"):
    epoch.take(8, 9)


def test_streamed_steps_equal_gathered_steps_bitwise():
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (96, 28, 28, 1), dtype=np.uint8)
  labels = rng.integers(0, 10, 96).astype(np.int32)
  order = rng.permutation(96).reshape(3, 32).astype(np.int32)
  scale = preprocess.scale_to_unit
  gathered = jax.jit(functools.partial(train.train_steps, preprocess=scale))(
      make_state(), images, labels, order)
  streamed = jax.jit(functools.partial(train.train_steps_on_batches, preprocess=scale))(
      make_state(), images[order], labels[order])
  for a, b in zip(jax.tree.leaves(gathered), jax.tree.leaves(streamed)):
    if jax.dtypes.issubdtype(a.dtype, jax.dtypes.prng_key):
      a, b = jax.random.key_data(a), jax.random.key_data(b)
    np.testing.assert_array_equal(a, b)


def eval_labels(batches):
  """(number of valid examples, multiset of their labels) of host eval batches."""
  labels = collections.Counter()
  for _, y, mask in batches:
    labels.update(np.asarray(y)[np.asarray(mask)].tolist())
  return sum(labels.values()), labels


def test_eval_covers_every_test_example_once_across_uneven_process_shares(builder):
  _, expected = source.read_split(builder, "test")
  expected = collections.Counter(expected.tolist())
  assert streaming.share_sizes(builder, "test", 3) == [334, 333, 333]
  counts, together = [], collections.Counter()
  for process in range(3):
    ds = streaming.eval_dataset(builder, "test", local_batch=32, process_index=process,
                                process_count=3)
    batches = list(ds.as_numpy_iterator())
    counts.append(len(batches))
    assert all(x.shape == (32, 28, 28, 1) for x, _, _ in batches)
    together += eval_labels(batches)[1]
  assert counts == [11, 11, 11]  # Same number of eval steps in every process.
  assert together == expected


EIGHT_DEVICES = """
import collections, json, sys
import jax, numpy as np
from cnn_jax import mesh as mesh_lib
from cnn_jax.data import source, streaming
from experiments import seed_cnn
config = seed_cnn.get_config()
config.data_dir, config.eval_batch_size, config.batch_size = sys.argv[1], 96, 64
mesh = mesh_lib.make_mesh()
data = streaming.load(config, mesh)
labels, shapes = collections.Counter(), set()
for images, y, mask in data.eval_batches():
  assert images.sharding.spec == jax.sharding.PartitionSpec(None, "data")
  assert len(images.sharding.device_set) == 8
  shapes.add(images.shape)
  labels.update(np.asarray(y)[np.asarray(mask)].tolist())
images, y = data.train_epoch(0, 3).take(3, 5)
print(json.dumps({"devices": mesh.devices.size, "labels": labels, "shapes": sorted(shapes),
                  "train": [images.shape, len(images.addressable_shards),
                            images.addressable_shards[0].data.shape]}))
"""


def test_eval_and_train_batches_on_8_simulated_devices(builder, data_dir):
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8")
  out = subprocess.run([sys.executable, "-c", EIGHT_DEVICES, data_dir], cwd=ROOT,
                       env=env, capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-3000:]
  result = json.loads(out.stdout.strip().splitlines()[-1])
  _, expected = source.read_split(builder, "test")
  assert result["devices"] == 8
  assert {int(k): v for k, v in result["labels"].items()} == collections.Counter(
      expected.tolist())
  assert result["shapes"] == [[1, 96, 28, 28, 1]]
  assert result["train"] == [[2, 64, 28, 28, 1], 8, [2, 8, 28, 28, 1]]


def test_auto_streams_only_splits_larger_than_the_limit(seed_config, builder):
  size = 4000 * 28 * 28
  assert streaming.decoded_bytes(builder, "train") == size
  seed_config.in_memory_max_bytes = size
  assert streaming.choose_pipeline(seed_config, builder) == "in_memory"
  seed_config.in_memory_max_bytes = size - 1
  assert streaming.choose_pipeline(seed_config, builder) == "streaming"
  seed_config.train_split = "train[:1000]"  # The split the run reads, not all of it.
  assert streaming.choose_pipeline(seed_config, builder) == "in_memory"
  seed_config.input_pipeline = "in_memory"
  seed_config.in_memory_max_bytes = 0
  assert streaming.choose_pipeline(seed_config, builder) == "in_memory"
  seed_config.input_pipeline = "disk"
  with pytest.raises(ValueError, match="input_pipeline='disk' is not one of in_memory"):
    streaming.choose_pipeline(seed_config, builder)


def test_streamed_channel_stats_equal_in_memory_ones(builder):
  images, _ = source.read_split(builder, "train")
  expected = preprocess.channel_stats(images)
  got = streaming.channel_stats(builder, "train", chunk=300)
  np.testing.assert_array_equal(got[0], expected[0])
  np.testing.assert_array_equal(got[1], expected[1])


def test_one_streamed_epoch_learns(seed_config, tmp_path):
  seed_config.input_pipeline = "streaming"
  record = run.train_and_evaluate(seed_config, str(tmp_path / "run"))
  assert record["step"] == 125
  assert record["test_accuracy"] > 0.85
  assert record["data_wait_sec"] >= 0


STREAMED = (*test_resume.SMALL[:1], "--config.num_epochs=2", *test_resume.SMALL[2:],
            "--config.input_pipeline=streaming", "--config.shuffle_buffer=500")


def test_streamed_run_killed_mid_epoch_resumes_bitwise(data_dir, tmp_path):
  reference = tmp_path / "uninterrupted"
  test_resume.train_cli(reference, data_dir, *STREAMED)
  workdir = tmp_path / "killed"
  proc = subprocess.Popen(test_resume.command(workdir, data_dir, *STREAMED), cwd=ROOT,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  test_resume.wait_for_checkpoint(workdir, 45, proc)  # Step 5 of epoch 2.
  proc.kill()
  proc.communicate()
  assert proc.returncode == -signal.SIGKILL
  out = test_resume.train_cli(workdir, data_dir, *STREAMED)
  resumed = int(out.split("resumed from checkpoint step ")[1].split()[0])
  assert 45 <= resumed < 80 and resumed % 40
  step, params = test_resume.final_params(workdir)
  ref_step, ref_params = test_resume.final_params(reference)
  assert step == ref_step == 80
  test_resume.assert_trees_equal(params, ref_params, exact=True)
  assert (test_resume.learning_metrics(workdir)
          == test_resume.learning_metrics(reference))
