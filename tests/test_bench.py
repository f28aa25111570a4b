"""Smoke test of the speed benchmark (quick mode: few images, no end-to-end runs)."""

import json

import pytest

from cnn_jax import bench
from cnn_jax import xla_flags


def test_window_rates():
  times = [0.0, 1.0, 2.0, 3.0, 3.5, 4.0]
  assert bench.window_rates(times, 10, 1, 2) == [10.0, 20.0]
  with pytest.raises(ValueError, match="too few"):
    bench.window_rates(times, 10, 4, 2)


def test_default_xla_flags_do_not_override_the_user():
  assert xla_flags.with_default_flags("", ("--a=1",)) == "--a=1"
  assert xla_flags.with_default_flags("--a=2 --b", ("--a=1",)) == "--a=2 --b"
  env = {"XLA_FLAGS": "--b"}
  xla_flags.set_default_flags(env)
  assert env["XLA_FLAGS"].split()[0] == "--b"


@pytest.mark.slow
def test_quick_bench_writes_positive_numbers(tmp_path):
  out = tmp_path / "bench.json"
  assert bench.main(["--quick", "--batch-sizes", "32", "--images", "4000",
                     "--out", str(out)]) == 0
  results = json.loads(out.read_text())
  assert results["machine"]["cores"] > 0
  (row,) = results["steady_state"]
  assert row["batch_size"] == 32 and row["ratio"] > 0
  for name in ("ours", "keras"):
    for field in ("images_per_sec", "first_step_sec", "peak_rss_mb"):
      assert row[name][field] > 0, (name, field)
  assert row["ours"]["eval_images_per_sec"] > 0
  assert "end_to_end" not in results


@pytest.mark.slow
def test_vgg_workers_train_the_same_network_in_both_frameworks():
  args = ["--model", "vgg_bn", "--batch-size", "128", "--images", "768", "--windows", "1"]
  ours = bench.run_worker(["--worker", "jax", *args])
  keras = bench.run_worker(["--worker", "keras", *args])
  assert ours["model"] == keras["model"] == "vgg_bn"
  assert ours["conv"] == "fast"
  # models/vgg.py's VGGBN has 871,082 parameters; the Keras copy must too.
  assert keras["trainable_parameters"] == 871_082
  assert ours["images_per_sec"] > 0 and keras["images_per_sec"] > 0
