"""The speed benchmark's plumbing: its method on synthetic timings, both sides
training the same network, and a --quick run producing every row. No timed asserts."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from cnn_jax.cpu import flags as xla_flags
from benchmarks import cli, method, plan, profile, render


def feed(steady: method.SteadyState, rates, images=1000) -> int:
  """Windows of `images` at `rates` until the detector is done; windows used."""
  for i, rate in enumerate(rates):
    if steady.add(images, images / rate):
      return i + 1
  raise AssertionError("the detector never finished")


def test_steady_state_discards_warm_up_and_stops_when_two_windows_agree():
  steady = method.SteadyState(tolerance=0.04, max_windows=10)
  used = feed(steady, [4855, 11560, 17627, 24989, 24813, 1.0, 1.0])
  assert used == 5
  result = steady.result()
  assert result["steady"] and result["discarded"] == 3
  assert result["images_per_sec"] == pytest.approx(2000 / (1000 / 24989 + 1000 / 24813))
  assert result["first_window_sec"] == pytest.approx(1000 / 4855)


def test_steady_state_needs_consecutive_windows_within_tolerance():
  steady = method.SteadyState(tolerance=0.04, max_windows=10)
  # 100 vs 105 differ by 4.8% of the larger: not yet; 105 vs 103 by 1.9%: steady.
  assert feed(steady, [100, 105, 103]) == 3
  assert steady.result()["discarded"] == 1


def test_steady_state_gives_up_after_the_cap_and_says_so():
  steady = method.SteadyState(tolerance=0.04, max_windows=4)
  assert feed(steady, [100, 200, 100, 200, 100]) == 4
  result = steady.result()
  assert not result["steady"] and result["discarded"] == 2
  assert result["images_per_sec"] == pytest.approx(2000 / (10 + 5))
  assert len(result["windows"]) == 4


def test_steady_state_gives_up_after_its_time_but_not_before_two_windows():
  steady = method.SteadyState(tolerance=0.04, max_windows=10, max_seconds=5.0)
  assert steady.add(1000, 6.0) is False  # One window says nothing.
  assert steady.add(1000, 1.0) is True
  assert not steady.result()["steady"]


def test_steady_state_rejects_bad_input():
  steady = method.SteadyState()
  with pytest.raises(ValueError, match="positive"):
    steady.add(100, 0.0)
  steady.add(100, 1.0)
  with pytest.raises(ValueError, match="needs two"):
    steady.result()


def test_spread_and_repetition_summary():
  assert method.spread([3.0, 1.0, 2.0, 10.0]) == {"median": 2.5, "min": 1.0,
                                                  "max": 10.0, "n": 4}
  reps = [{"images_per_sec": v, "discarded": d, "steady": s}
          for v, d, s in [(10.0, 1, True), (12.0, 0, True), (11.0, 8, False)]]
  summary = method.summarize_reps(reps)
  assert summary["images_per_sec"]["median"] == 11.0
  assert summary["discarded"] == [1, 0, 8] and not summary["steady"]
  with pytest.raises(ValueError):
    method.spread([])


def test_load_between_counts_other_processes_only():
  start = method.LoadSnapshot(0.0, (0, 0, 0), 0.0, (0.1, 0.1, 0.1))
  tick, cores = os.sysconf("SC_CLK_TCK"), os.cpu_count()
  # Over 10 s, the machine was busy for 4 CPU-seconds per core; 1 s of it was ours.
  busy = 4 * cores * tick
  end = method.LoadSnapshot(10.0, (busy, 0, 10 * cores * tick), 1.0, (1.0, 1.0, 1.0))
  load = method.load_between(start, end)
  assert load["busy_share"] == pytest.approx(0.4)
  assert load["others_share"] == pytest.approx((4 * cores - 1) / (10 * cores))
  assert load["busy"]


def test_every_cell_divides_its_windows():
  for cell in plan.CELLS + tuple(plan.quick(c) for c in plan.CELLS):
    for config in plan.keras_configs(cell):
      assert cell.window_steps % config["steps_per_execution"] == 0, cell
  names = [plan.config_name(c) for c in plan.keras_configs(plan.CELLS[0])]
  assert names[0] == "spe 1, auto" and len(set(names)) == len(names)


def test_profile_groups_thunks_by_the_model_code_they_come_from():
  hlo = ('  %ynn_fusion.3 = f32[128,5408]{1,0} fusion(%a), kind=kCustom, metadata={op_name='
         '"jit(train_steps)/while/body/closed_call/transpose(jvp(SeedCNN))/Dense_0/'
         'dot_general" stack_frame_id=116}')
  assert profile.op_names(hlo) == {
      "ynn_fusion.3": ("f32[128,5408]{1,0}", "transpose(jvp(SeedCNN))/Dense_0/dot_general")}
  assert profile.category("transpose(jvp(SeedCNN))/Dense_0/dot_general") == "backward: Dense"
  assert profile.category("transpose(jvp(CifarResNet))/BasicBlock_3/Conv_0/"
                          "conv_general_dilated") == "backward: Conv"
  assert profile.category("jvp(VGGBN)/Conv_1/cond/branch_0_fun/slice") == (
      "forward: Conv (shifted-window copies)")
  assert profile.category("jvp(SeedCNN)/jit(relu)/max") == "forward: ReLU, max-pool"
  assert profile.category("add") == "optimizer, metrics, loop"


def test_default_xla_flags_do_not_override_the_user():
  assert xla_flags.with_default_flags("", ("--a=1",)) == "--a=1"
  assert xla_flags.with_default_flags("--a=2 --b", ("--a=1",)) == "--a=2 --b"
  env = {"XLA_FLAGS": "--b"}
  xla_flags.set_default_flags(env)
  assert env["XLA_FLAGS"].split()[0] == "--b"


def test_experimental_xla_flags_only_on_the_jaxlib_they_were_measured_on():
  ynn = "--xla_cpu_experimental_ynn_fusion_type=-individual_convolution"
  assert ynn in xla_flags.default_flags("0.10.2")
  assert xla_flags.default_flags("0.11.2") == xla_flags.DEFAULT_FLAGS  # Unknown there.
  # XLA accepts every default of the installed jaxlib (it stops on a flag it does not
  # know): a fresh process with exactly these flags computes.
  env = {**os.environ, "XLA_FLAGS": " ".join(xla_flags.default_flags())}
  out = subprocess.run([sys.executable, "-c", "import jax.numpy as jnp; print(jnp.ones(2).sum())"],
                       env=env, capture_output=True, text=True, timeout=120)
  assert out.returncode == 0 and out.stdout.strip() == "2.0", out.stderr[-2000:]


@pytest.mark.slow
@pytest.mark.parametrize("model, shape, params, speedrun", [
    ("seed_cnn", (28, 28, 1), 347_146, False), ("vgg_bn", (28, 28, 1), 871_082, False),
    ("resnet20", (32, 32, 3), 269_722, False), ("fast_cnn", (28, 28, 1), 824_778, True)])
def test_keras_network_is_ours(model, shape, params, speedrun):
  """Same parameter count, and from our initial weights the same loss on the same
  first batch (training mode: BatchNorm on batch statistics; dropout off on both).
  `speedrun`: the speedrun recipe's network (its model_kwargs), as its Keras twin
  (benchmarks/keras_speedrun.py) builds it."""
  from benchmarks import keras_nets  # pylint: disable=g-import-not-at-top
  _, keras = keras_nets.import_keras()
  import jax  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top
  from cnn_jax import models, train  # pylint: disable=g-import-not-at-top
  kwargs = dict(dropout_rate=0.0, head_dropout_rate=0.0) if model == "vgg_bn" else {}
  if speedrun:
    from experiments import speedrun_fashion_mnist  # pylint: disable=g-import-not-at-top
    kwargs = speedrun_fashion_mnist.get_config().model_kwargs.to_dict()
  net = models.build_model(model, 10, **kwargs)
  state = train.create_train_state(net, jax.random.key(0), shape, optax.adam(1e-3))
  peer = keras_nets.build(model, shape, 10, **kwargs)
  assert keras_nets.trainable_parameters(peer) == models.summary(net, shape)["params"]
  assert keras_nets.trainable_parameters(peer) == params
  keras_nets.copy_weights(peer, state.params, state.batch_stats)

  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (32, *shape), dtype=np.uint8).astype(np.float32) / 255
  labels = rng.integers(0, 10, 32).astype(np.int32)
  variables = {"params": state.params}
  if state.batch_stats is not None:
    variables["batch_stats"] = state.batch_stats
  logits, _ = net.apply(variables, images, train=True, mutable=["batch_stats"])
  ours = float(train.cross_entropy(logits, labels).mean())
  theirs = float(keras.losses.SparseCategoricalCrossentropy(from_logits=True)(
      labels, peer(images, training=True)))
  assert theirs == pytest.approx(ours, rel=1e-5)


UNSEEN = "benchmarks.unseen.flax_nets:"


@pytest.mark.slow
@pytest.mark.parametrize("name,count", [
    ("SmallNet", 682), ("MobileNetGN", 54_346), ("StemResNet", 77_802),
    ("DilatedNet", 190_634), ("ConvNeXtTiny", 221_146)])
def test_unseen_keras_twin_is_the_plain_flax_network(name, count):
  """The bench's networks written outside the package: same parameter count, same loss
  from the same weights on one batch (evaluation mode: dropout off)."""
  from benchmarks import keras_nets  # pylint: disable=g-import-not-at-top
  _, keras = keras_nets.import_keras()
  import jax  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top
  from cnn_jax import models, train  # pylint: disable=g-import-not-at-top
  net = models.build_model(UNSEEN + name, 10)
  state = train.create_train_state(net, jax.random.key(0), (28, 28, 1), optax.adam(1e-3))
  # Non-trivial weights: the initial layer scales and biases are constants.
  params = jax.tree.map(lambda p: p + 0.1 * jax.random.normal(jax.random.key(1), p.shape),
                        state.params)
  peer = keras_nets.build(UNSEEN + name, (28, 28, 1), 10)
  assert keras_nets.trainable_parameters(peer) == models.summary(net, (28, 28, 1))["params"]
  assert keras_nets.trainable_parameters(peer) == count
  keras_nets.copy_weights(peer, params, state.batch_stats)
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (16, 28, 28, 1), dtype=np.uint8).astype(np.float32) / 255
  labels = rng.integers(0, 10, 16).astype(np.int32)
  variables = {"params": params, **({"batch_stats": state.batch_stats}
                                    if state.batch_stats is not None else {})}
  ours = float(train.cross_entropy(net.apply(variables, images, train=False), labels).mean())
  theirs = float(keras.losses.SparseCategoricalCrossentropy(from_logits=True)(
      labels, peer(images, training=False)))
  # LayerNorm's variance is computed otherwise on each side (flax: E[x^2] - E[x]^2):
  # ConvNeXtTiny's losses differ by 3e-4 of themselves, the others' by less than 1e-5.
  assert theirs == pytest.approx(ours, rel=1e-3)


@pytest.mark.slow
def test_keras_network_rejects_weights_of_another_network():
  from benchmarks import keras_nets  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top
  from cnn_jax import models, train  # pylint: disable=g-import-not-at-top
  net = models.build_model("seed_cnn", 10, hidden=32)
  state = train.create_train_state(net, jax.random.key(0), (28, 28, 1), optax.adam(1e-3))
  with pytest.raises(ValueError, match="shape"):
    keras_nets.copy_weights(keras_nets.build("seed_cnn", (28, 28, 1)), state.params)


@pytest.mark.slow
def test_quick_bench_produces_every_row(tmp_path, data_dir):
  # Two cells take every path of the cells' code: with and without a bfloat16 row, the
  # end-to-end job's Keras best from seed_cnn/32. VGG-BN's and ResNet-20's own parts,
  # their networks on both sides, are test_keras_network_is_ours's; their rendering
  # (ResNet-20 without a target) test_published_cpu_run_renders_from_its_json's. The
  # four cells took 345 s of a 391 s quick run on a 2-core AVX2 machine; these two 89.
  out = tmp_path / "bench.json"
  cells = ["seed_cnn/32", "seed_cnn/128"]
  assert cli.main(["--quick", "--cells", ",".join(cells), "--data-dir", data_dir,
                   "--out", str(out)]) == 0
  results = json.loads(out.read_text())
  assert [c["name"] for c in results["cells"]] == cells
  for cell in results["cells"]:
    assert cell["ours"]["images_per_sec"]["median"] > 0
    assert cell["ours"]["params"] == cell["keras"]["params"]
    *tuned, xla = cell["keras"]["tuning"]
    assert [t["name"] for t in tuned] == [
        plan.config_name(c) for c in plan.keras_configs(plan.quick(plan.CELLS[0]))]
    assert xla["jit_compile"] is True and xla["jit_compile_resolved"]
    assert cell["keras"]["rows"][0]["name"] == "spe 1, auto"
    assert all(r["images_per_sec"]["n"] == 1 for r in cell["keras"]["rows"])
    assert cell["ratio"] > 0 and "others_share" in cell["load"]
    plan_cell = next(c for c in plan.CELLS if c.name == cell["name"])
    assert (cell["ours_bfloat16"] is not None) == plan_cell.bf16
    if plan_cell.bf16:
      assert cell["ours_bfloat16"]["images_per_sec"]["median"] > 0
  assert "bfloat16 / float32" in render.markdown(results)
  job = results["end_to_end"]
  for key in ("ours", "keras_defaults", "keras_best"):
    assert job[key]["seconds"]["median"] > 0
    assert job[key]["runs"][0]["test_accuracy"] is not None
  # Ours once on an empty compilation cache, then the repetitions on what it left:
  # the same training either way.
  first = job["ours_first_run"]
  assert first["test_accuracy"] == job["ours"]["runs"][0]["test_accuracy"]
  assert job["ratio_first_run"] > 0 and job["eval_batch_size"] == 256
  run = job["ours"]["runs"][0]  # One epoch: its training and evaluation speed.
  assert len(run["train_images_per_sec"]) == len(run["eval_images_per_sec"]) == 1
  assert min(run["train_images_per_sec"] + run["eval_images_per_sec"]) > 0
  assert "compilation cache empty" in render.markdown(results)
  assert results["floor"]["train_flops_per_image"] > 0
  assert {t["name"].split(":")[0] for t in results["targets"]} >= set(cells)
  assert all(t["floor"]["needed"] > 0 for t in results["targets"] if "floor" in t)
  assert "of this cell's compute floor" in render.markdown(results)
  # The docs' tables are rendered from the JSON alone, the same text as printed.
  assert render.markdown(results).count("\n| ") >= 2 * len(cells) + 3
  assert cli.main(["--markdown", str(out)]) == 0


def test_a_target_is_stated_as_the_share_of_the_compute_floor_it_needs():
  cell = {"target": 2.0, "keras_best": 10_000.0,
          "ours": {"best": 15_000.0, "train_flops_per_image": 4e6}}
  floor = cli.cell_floor(cell, peak=2e11)  # 200 GFLOP/s: 50,000 img/s.
  assert floor == {"images_per_sec": 50_000.0, "needed": 0.4, "ours": 0.3,
                   "keras": 0.2}
  assert cli.cell_floor(cell, peak=None) is None


def test_keras_fastest_setting_is_the_one_with_the_best_measurement():
  """Not the best median: in a run where two of spe 200's three repetitions were
  disturbed (6,501 and 7,208 img/s against 12,821 and 13,110 in tuning), the median
  named spe 1, auto, which then ran end to end as "Keras best" at 44-82 s."""
  rows = [{"name": "spe 1, auto", "images_per_sec": {"median": 8155.0}, "best": 8489.0},
          {"name": "spe 200, no xla", "images_per_sec": {"median": 7208.0},
           "best": 13110.0}]
  assert cli.fastest_row(rows)["name"] == "spe 200, no xla"


def test_best_rate_is_the_best_steady_measurement():
  runs = [{"images_per_sec": 900.0, "steady": True}, {"images_per_sec": 1200.0,
                                                       "steady": False},
          {"images_per_sec": 1000.0, "steady": True}]
  assert method.best_rate(runs) == 1000.0  # An unsteady burst does not count...
  assert method.best_rate(runs[1:2]) == 1200.0  # ...unless nothing was steady.


def _gpu_row(name, dtype, rates, flops=None):
  reps = [{"images_per_sec": r, "steady": True, "discarded": 0} for r in rates]
  row = {"name": name, "dtype": dtype, **method.summarize_reps(reps)}
  if flops:
    row["forward_flops_per_image"] = flops
  return row


def test_gpu_ratios_compare_each_sides_best_and_name_the_targets():
  """gpu.add_ratios and gpu.targets on synthetic measurements (no GPU, no torch)."""
  from benchmarks import gpu  # pylint: disable=g-import-not-at-top
  rows = [_gpu_row("ours float32", "float32", [200, 300, 250], flops=1e6),
          _gpu_row("ours bfloat16", "bfloat16", [400, 410, 390]),
          _gpu_row("torch eager float32, as shipped", "float32", [100, 120, 110]),
          _gpu_row("torch eager float32, tuned", "float32", [150, 160, 140]),
          _gpu_row("torch eager bf16 autocast, tuned", "bfloat16", [100, 100, 100]),
          _gpu_row("torch.compile float32, tuned", "float32", [100, 150, 120]),
          _gpu_row("torch.compile bf16 autocast, tuned", "bfloat16", [205, 200, 190])]
  assert [r["name"] for r in rows] == [name for name, _, _ in gpu.ROWS]
  cell = {"name": "vgg_bn/512", "model": "vgg_bn", "rows": rows}
  gpu.add_ratios(cell, {"flops_per_sec": {"float32": 3e9, "bfloat16": 6e9}})
  assert cell["ratios"]["float32"] == pytest.approx(300 / 150)  # best / best
  assert cell["ratios_median"]["float32"] == pytest.approx(250 / 120)
  assert cell["ratios"]["bfloat16"] == pytest.approx(410 / 205)
  assert cell["ratios"]["best"] == pytest.approx(410 / 205)
  assert cell["ratios"]["torch_best"] == "torch.compile bf16 autocast, tuned"
  assert cell["train_flops_per_image"] == 3e6
  assert rows[0]["share_of_peak"] == pytest.approx(250 * 3e6 / 3e9)
  assert rows[1]["share_of_peak"] == pytest.approx(400 * 3e6 / 6e9)
  results = {"cells": [cell]}
  targets = gpu.targets(results)
  assert [t["pass"] for t in targets] == [True, True, True]
  assert targets[0]["name"] == "vgg_bn/512 (float32): ours / torch.compile"


def _docs(name: str) -> str:
  with open(os.path.join(os.path.dirname(__file__), "..", "docs", name)) as f:
    return f.read()


def _published(name: str) -> dict:
  return json.loads(_docs(name))


def test_published_cpu_run_renders_from_its_json():
  """docs/performance.md's CPU tables are `--markdown docs/bench_latest.json`: the
  ratio that counts there is each side's best measurement."""
  results = _published("bench_latest.json")
  text = render.markdown(results)
  for cell in results["cells"]:
    best = max(r["best"] for r in cell["keras"]["rows"])
    assert cell["ratio"] == pytest.approx(cell["ours"]["best"] / best)
    assert f"**{cell['ratio']:.2f}x**" in text
  assert text in _docs("performance.md")


def test_published_avx512_run_renders_from_its_json():
  """docs/performance.md's run of every cell with the CPU backend is `--markdown
  docs/bench_avx512_latest.json`."""
  results = _published("bench_avx512_latest.json")
  assert {c["name"] for c in results["cells"]} >= {"vgg_bn/128", "resnet20/128",
                                                   "ConvNeXtTiny/32"}
  assert render.markdown(results) in _docs("performance.md")


def test_published_gpu_run_renders_from_its_json():
  """docs/performance.md's GPU table is `--markdown docs/bench_gpu_latest.json`."""
  results = _published("bench_gpu_latest.json")
  text = render.markdown(results)
  for cell in results["cells"]:
    assert cell["check"]["params_ours"] == cell["check"]["params_torch"]
    assert cell["check"]["loss_torch"] == pytest.approx(cell["check"]["loss_ours"],
                                                        rel=1e-4)
    for row in cell["rows"]:
      assert f"| {row['name']} | {row['images_per_sec']['median']:,.0f} (" in text
  assert text.count("**pass**") + text.count("**FAIL**") == len(results["targets"])
  assert text in _docs("performance.md")


@pytest.mark.slow
def test_speedrun_bench_times_both_sides_the_same_way(tmp_path, data_dir):
  """`./run.sh bench --speedrun` on the embedded dataset, one seed, two epochs (62
  steps; after one, 32 steps, Keras's twin still evaluates at chance while ours is
  at 0.95): Keras tuned by the bench's method, then each side a process timed from
  its start."""
  from benchmarks import speedrun  # pylint: disable=g-import-not-at-top
  recipe = tmp_path / "recipe.py"
  recipe.write_text(
      "from experiments import speedrun_fashion_mnist\n"
      "def get_config():\n"
      "  c = speedrun_fashion_mnist.get_config()\n"
      "  c.dataset = 'mnist_5k'\n"
      "  return c\n")
  out = tmp_path / "speedrun.json"
  assert cli.main(["--speedrun", "--config", str(recipe), "--seeds", "1", "--epochs", "2",
                   "--data-dir", data_dir, "--max-windows", "2", "--out", str(out)]) == 0
  result = json.loads(out.read_text())
  *tuned, xla = result["keras_tuning"]["tuning"]
  assert [t["config"] for t in tuned] == [
      {"steps_per_execution": s, "jit_compile": j}
      for s, j in ((1, "auto"), (10, False), (30, False))]
  assert xla["config"]["jit_compile"] is True
  assert result["recipe"]["tta"] == "none" and result["recipe"]["flip"] is False
  for side in ("ours", "keras"):
    [run] = result["runs"][side]
    assert run["epochs"] == 2 and run["test_accuracy"] > 0.9
    parts = [run[k] for k in ("startup_sec", "train_sec", "eval_sec")]
    assert min(parts) > 0 and sum(parts) + (run["compile_sec"] or 0) == pytest.approx(
        run["seconds"])
  assert result["runs"]["keras"][0]["parameters"] == 824_778
  assert result["ratio"] == pytest.approx(result["runs"]["keras"][0]["seconds"]
                                          / result["runs"]["ours"][0]["seconds"])
  assert "Keras / ours, seconds to the final accuracy" in speedrun.markdown(result)
