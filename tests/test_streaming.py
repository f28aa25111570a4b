"""The one data interface: device-resident and streamed (Grain) pipelines give the same
batches, cover every example once in evaluation, split work between processes, and
whole runs on either resume bitwise."""

import collections
import hashlib
import json
import os
import signal
import subprocess
import sys

import jax
import numpy as np
import pytest

from cnn_jax import data, launch
from cnn_jax import mesh as mesh_lib
from cnn_jax import run
from cnn_jax.data import batching, preprocess, streaming
from tests import test_resume

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def open_dataset(config, pipeline, key=0):
  config.input_pipeline = pipeline
  return data.load(config, mesh_lib.make_mesh(), jax.random.key(key),
                   steps_per_dispatch=config.steps_per_dispatch)


def host_batches(dataset, epoch, start=0, chunk=7):
  """(images, labels) of each step of an epoch, gathered on the host from the chunks."""
  epoch_batches = dataset.train_epoch(epoch, start)
  out, pos = [], start
  while pos < dataset.steps_per_epoch:
    end = min(pos + chunk, dataset.steps_per_epoch)
    c = epoch_batches.take(pos, end)
    images, labels = np.asarray(c.arrays["image"]), np.asarray(c.arrays["label"])
    out += [(images[rows], labels[rows]) for rows in np.asarray(c.index)]
    pos = end
  return out


def assert_same_batches(a, b):
  assert len(a) == len(b)
  for (xa, ya), (xb, yb) in zip(a, b):
    np.testing.assert_array_equal(xa, xb)
    np.testing.assert_array_equal(ya, yb)


@pytest.fixture
def small_config(seed_config):
  seed_config.train_split = "train[:1001]"  # Odd: 31 steps of 32, 9 examples dropped.
  return seed_config


def test_streamed_and_in_memory_give_the_same_batches_in_the_same_order(small_config):
  resident = open_dataset(small_config, "in_memory")
  streamed = open_dataset(small_config, "streaming")
  assert resident.info == streamed.info
  assert resident.steps_per_epoch == streamed.steps_per_epoch == 1001 // 32
  for epoch in (0, 1):
    batches = host_batches(resident, epoch)
    assert_same_batches(batches, host_batches(streamed, epoch, chunk=5))
    assert batches[0][0].shape == (32, 28, 28, 1) and batches[0][0].dtype == np.uint8
    assert batches[0][1].dtype == np.int32
  # Each epoch is a fresh draw: 992 distinct examples of the 1,001.
  all_images, all_labels = data.read_split(
      data.source.prepared_builder("mnist_5k", small_config.data_dir), "train[:1001]")
  epoch0 = host_batches(resident, 0)
  seen = collections.Counter(x.tobytes() for b, _ in epoch0 for x in b)
  assert sum(seen.values()) == 992 and set(seen) <= {x.tobytes() for x in all_images}
  assert len(all_labels) == 1001
  assert not np.array_equal(np.concatenate([y for _, y in epoch0]),
                            np.concatenate([y for _, y in host_batches(resident, 1)]))


def test_a_resumed_epoch_sees_the_rest_of_the_uninterrupted_one(small_config):
  streamed = open_dataset(small_config, "streaming")
  whole = host_batches(streamed, 2)
  for start in (1, 15, 30):
    assert_same_batches(host_batches(streamed, 2, start=start), whole[start:])


def test_chunks_are_global_arrays_taken_in_order(small_config):
  streamed = open_dataset(small_config, "streaming")
  epoch = streamed.train_epoch(0)
  c = epoch.take(0, 5)
  assert c.arrays["image"].shape == (160, 28, 28, 1) and c.mask is None
  assert c.arrays["image"].sharding.spec == jax.sharding.PartitionSpec(mesh_lib.DATA_AXIS)
  np.testing.assert_array_equal(c.index, np.arange(160).reshape(5, 32))
  assert epoch.wait_sec >= 0
  with pytest.raises(ValueError, match="in order, without gaps"):
    epoch.take(7, 9)


def test_chunk_layout_and_process_columns_cover_each_batch_once():
  # Two processes, 3 steps of local batch 4: process p's step k is at p*12 + k*4 + j.
  layout = streaming.chunk_layout(3, 4, 2)
  np.testing.assert_array_equal(layout[1], [4, 5, 6, 7, 16, 17, 18, 19])
  assert sorted(layout.ravel()) == list(range(24))
  order = np.arange(60).reshape(5, 12)
  columns = [streaming.local_columns(order, p, 3) for p in range(3)]
  assert all(c.shape == (5, 4) for c in columns)
  np.testing.assert_array_equal(np.concatenate(columns, axis=1), order)
  with pytest.raises(ValueError, match="not divisible by the 5 processes"):
    streaming.local_columns(order, 0, 5)


@pytest.mark.parametrize("pipeline", ["in_memory", "streaming"])
def test_eval_covers_every_example_once(seed_config, pipeline):
  seed_config.test_split = "test[:999]"
  seed_config.eval_batch_size = 64  # 16 batches, the last one padded.
  dataset = open_dataset(seed_config, pipeline)
  labels = collections.Counter()
  shapes = set()
  for c in dataset.eval_chunks("test"):
    y = np.asarray(c.arrays["label"])[np.asarray(c.index)]
    labels.update(y[np.asarray(c.mask)].tolist())
    shapes.add(np.asarray(c.index).shape)
  _, expected = data.read_split(data.source.prepared_builder(
      "mnist_5k", seed_config.data_dir), "test[:999]")
  assert labels == collections.Counter(expected.tolist())
  assert len(shapes) == 1  # Every dispatch has one shape: one compilation.


def test_streamed_training_equals_in_memory_training_bitwise(small_config, tmp_path):
  small_config.num_epochs = 2
  small_config.steps_per_dispatch = 10
  resident = run.train_and_evaluate(small_config, str(tmp_path / "resident"))
  small_config.input_pipeline = "streaming"
  streamed = run.train_and_evaluate(small_config, str(tmp_path / "streamed"))
  assert streamed["data_wait_sec"] >= 0
  keys = ("train_loss", "train_accuracy", "test_loss", "test_accuracy", "step")
  assert {k: resident[k] for k in keys} == {k: streamed[k] for k in keys}
  test_resume.assert_trees_equal(test_resume.final_params(tmp_path / "resident")[1],
                                 test_resume.final_params(tmp_path / "streamed")[1])


def test_grain_worker_processes_read_the_same_batches(small_config):
  small_config.train_split = "train[:320]"
  threads = open_dataset(small_config, "streaming")
  small_config.data_workers = 2
  workers = open_dataset(small_config, "streaming")
  assert workers.workers == 2
  assert_same_batches(host_batches(threads, 0), host_batches(workers, 0))


def test_auto_streams_only_splits_larger_than_the_limit(seed_config):
  info, _ = data.open_splits(seed_config)
  size = 4000 * 28 * 28
  seed_config.in_memory_max_bytes = size
  assert data.choose_pipeline(seed_config, info) == "in_memory"
  seed_config.in_memory_max_bytes = size - 1
  assert data.choose_pipeline(seed_config, info) == "streaming"
  seed_config.input_pipeline = "in_memory"
  assert data.choose_pipeline(seed_config, info) == "in_memory"
  seed_config.input_pipeline = "disk"
  with pytest.raises(data.DatasetError, match="input_pipeline='disk' is not one of"):
    data.choose_pipeline(seed_config, info)


def test_channel_stats_of_the_train_split(seed_config):
  _, named = data.open_splits(seed_config)
  images, _ = named["train"].read(np.arange(len(named["train"])))
  expected = preprocess.channel_stats(images)
  got = data.channel_stats(named["train"], chunk=300)
  np.testing.assert_array_equal(got[0], expected[0])
  np.testing.assert_array_equal(got[1], expected[1])


def test_a_split_smaller_than_one_batch_is_a_clear_error(seed_config):
  seed_config.train_split = "train[:20]"
  with pytest.raises(data.DatasetError, match=r"has 20 examples, fewer than one batch"):
    open_dataset(seed_config, "in_memory")


EIGHT_DEVICES = """
import collections, json, sys
import jax, numpy as np
from cnn_jax import data, mesh as mesh_lib
from experiments import seed_cnn
config = seed_cnn.get_config()
config.data_dir, config.eval_batch_size, config.batch_size = sys.argv[1], 96, 64
config.input_pipeline = "streaming"
dataset = data.load(config, mesh_lib.make_mesh(), jax.random.key(0),
                    steps_per_dispatch=config.steps_per_dispatch)
labels, shapes = collections.Counter(), set()
for c in dataset.eval_chunks("test"):
  assert len(c.arrays["image"].sharding.device_set) == 8
  shapes.add(c.index.shape)
  labels.update(np.asarray(c.arrays["label"])[c.index][c.mask].tolist())
c = dataset.train_epoch(0, 3).take(3, 5)
print(json.dumps({"labels": labels, "shapes": sorted(shapes),
                  "train": [c.arrays["image"].shape, len(c.arrays["image"].addressable_shards),
                            c.arrays["image"].addressable_shards[0].data.shape]}))
"""


def test_eval_and_train_chunks_on_8_simulated_devices(data_dir):
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8")
  out = subprocess.run([sys.executable, "-c", EIGHT_DEVICES, data_dir], cwd=ROOT,
                       env=env, capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-3000:]
  result = json.loads(out.stdout.strip().splitlines()[-1])
  _, expected = data.read_split(data.source.prepared_builder("mnist_5k", data_dir), "test")
  assert {int(k): v for k, v in result["labels"].items()} == collections.Counter(
      expected.tolist())
  assert result["shapes"] == [[8, 96]]
  assert result["train"] == [[128, 28, 28, 1], 8, [16, 28, 28, 1]]


TWO_PROCESSES = """
import hashlib, json, sys
import jax, numpy as np
from cnn_jax import data, launch, mesh as mesh_lib
from experiments import seed_cnn
launch.initialize(sys.argv[2], 2, int(sys.argv[3]))
config = seed_cnn.get_config()
config.data_dir, config.batch_size = sys.argv[1], 64
config.train_split, config.input_pipeline = "train[:640]", "streaming"
dataset = data.load(config, mesh_lib.make_mesh(), jax.random.key(0),
                    steps_per_dispatch=config.steps_per_dispatch)
epoch, seen = dataset.train_epoch(0), []
for step in range(0, dataset.steps_per_epoch, 5):
  c = epoch.take(step, step + 5)
  for shard in c.arrays["image"].addressable_shards:
    seen += [hashlib.sha1(x.tobytes()).hexdigest() for x in np.asarray(shard.data)]
with open(sys.argv[4], "w") as f:
  json.dump(seen, f)
"""


def test_two_processes_stream_disjoint_shares_that_cover_the_epoch(data_dir, tmp_path):
  coordinator = f"127.0.0.1:{launch.free_port()}"
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1")
  outs = [tmp_path / f"seen{i}.json" for i in range(2)]
  # Output to files: a full pipe would block one process and, at its exit, the other.
  procs = [subprocess.Popen([sys.executable, "-c", TWO_PROCESSES, data_dir, coordinator,
                             str(i), str(outs[i])], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
           for i in range(2)]
  for p in procs:
    assert p.wait(timeout=300) == 0
  shares = [collections.Counter(json.loads(out.read_text())) for out in outs]
  config = _config_640(data_dir)
  resident = open_dataset(config, "in_memory")
  expected = collections.Counter(hashlib.sha1(x.tobytes()).hexdigest()
                                 for b, _ in host_batches(resident, 0) for x in b)
  assert sum(shares[0].values()) == sum(shares[1].values()) == 320
  assert shares[0] + shares[1] == expected  # Together the whole epoch, each once.


def _config_640(data_dir):
  from experiments import seed_cnn  # pylint: disable=g-import-not-at-top
  config = seed_cnn.get_config()
  config.data_dir, config.batch_size, config.train_split = data_dir, 64, "train[:640]"
  return config


def test_one_streamed_epoch_learns(seed_config, tmp_path):
  seed_config.input_pipeline = "streaming"
  record = run.train_and_evaluate(seed_config, str(tmp_path / "run"))
  assert record["step"] == 125
  assert record["test_accuracy"] > 0.85
  assert record["data_wait_sec"] >= 0


STREAMED = (*test_resume.SMALL[:1], "--config.num_epochs=2", *test_resume.SMALL[2:],
            "--config.input_pipeline=streaming")


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
