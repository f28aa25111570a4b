import functools
import json
import os
import subprocess
import sys
import types

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from cnn_jax import mesh as mesh_lib
from cnn_jax import models
from cnn_jax import train
from cnn_jax.data import batching, in_memory, preprocess

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def make_state(seed=0, lr=1e-3, tx=None):
  model = models.build_model("seed_cnn", num_classes=10)
  return train.create_train_state(model, jax.random.key(seed), (28, 28, 1),
                                  tx or optax.adam(lr))


class _Kernels(nn.Module):
  """4-D and 2-D kernels, BatchNorm and dropout: every kind of initial variable."""

  @nn.compact
  def __call__(self, x, train):
    x = nn.relu(nn.BatchNorm(use_running_average=not train)(nn.Conv(6, (3, 3))(x)))
    x = nn.Dropout(0.5, deterministic=not train)(nn.Conv(4, (2, 2))(x))
    return nn.Dense(10)(x.reshape(x.shape[0], -1))


def test_initial_variables_are_the_bits_of_the_plain_threefry_draw():
  # create_train_state draws through threefry on flat shapes (XLA:CPU compiles those
  # faster): the same bits as flax's own draw with the key as it is.
  model, shape, key = _Kernels(), (6, 6, 3), jax.random.key(7)
  state = jax.jit(lambda k: train.create_train_state(model, k, shape, optax.adam(1e-3)))(key)
  init_key, run_key = jax.random.split(key)
  plain = jax.jit(lambda k: model.init({"params": k, "dropout": k}, jnp.zeros((1, *shape)),
                                       train=False))(init_key)
  leaves = jax.tree_util.tree_leaves_with_path
  assert len(leaves((state.params, state.batch_stats))) == 10
  for (path, a), (_, b) in zip(leaves((state.params, state.batch_stats)),
                               leaves((plain["params"], plain["batch_stats"]))):
    assert a.shape == b.shape and np.array_equal(a, b), jax.tree_util.keystr(path)
  # The run's key stays a plain threefry key: checkpoints and resumes see no change.
  assert jax.random.key_impl(state.key) == jax.random.key_impl(key)
  np.testing.assert_array_equal(jax.random.key_data(state.key),
                                jax.random.key_data(run_key))


def fixed_batch(n=32, seed=0):
  rng = np.random.default_rng(seed)
  return {"image": jnp.asarray(rng.random((n, 28, 28, 1), np.float32)),
          "label": jnp.asarray(rng.integers(0, 10, n), jnp.int32)}


def test_jitted_step_lowers_loss_on_a_fixed_batch():
  state, batch = make_state(), fixed_batch()
  step = jax.jit(train.train_step)
  losses = []
  for _ in range(30):
    state, metrics = step(state, batch)
    losses.append(float(metrics["loss"] / metrics["count"]))
  assert losses[-1] < 0.5 * losses[0]
  assert int(state.step) == 30


def test_jitted_step_equals_unjitted_step():
  # Plain SGD: Adam's first step is lr * g / (|g| + eps), which turns the rounding of a
  # near-zero gradient into a visible change; SGD compares the step itself.
  batch, sgd = fixed_batch(8), optax.sgd(0.1)
  s1, m1 = jax.jit(train.train_step)(make_state(tx=sgd), batch)
  with jax.disable_jit():
    s2, m2 = train.train_step(make_state(tx=sgd), batch)
  for a, b in zip(jax.tree.leaves(s1.params), jax.tree.leaves(s2.params)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(m1["loss"], m2["loss"], rtol=1e-5)
  assert float(m1["count"]) == 8


def test_steps_trace_once_across_many_calls():
  traces = {"train": 0, "eval": 0}

  def counted(fn, name):
    def wrapped(*args):
      traces[name] += 1
      return fn(*args)
    return wrapped

  step = jax.jit(counted(train.train_step, "train"), donate_argnums=0)
  evaluate = jax.jit(counted(train.eval_step, "eval"))
  state = make_state()
  for i in range(6):
    state, _ = step(state, fixed_batch(seed=i))
    batch = {**fixed_batch(seed=i), "mask": jnp.ones(32, bool)}
    evaluate(state, batch)
  assert traces == {"train": 1, "eval": 1}


def test_eval_step_ignores_masked_examples():
  state, batch = make_state(), fixed_batch(8)
  mask = jnp.array([True] * 5 + [False] * 3)
  full = train.eval_step(state, {**batch, "mask": jnp.ones(8, bool)})
  part = train.eval_step(state, {**batch, "mask": mask})
  head = train.eval_step(
      state, {k: v[:5] for k, v in batch.items()} | {"mask": jnp.ones(5, bool)})
  assert float(part["count"]) == 5 and float(full["count"]) == 8
  np.testing.assert_allclose(part["loss"], head["loss"], rtol=1e-6)
  assert float(part["correct"]) == float(head["correct"])


def run_epochs(seed, epochs=2, n=256, batch=32):
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (n, 28, 28, 1), np.uint8)
  labels = rng.integers(0, 10, n).astype(np.int32)
  mesh = mesh_lib.make_mesh()
  split = in_memory.put_split(images, labels, mesh)
  chunk = jax.jit(functools.partial(train.train_steps, preprocess=preprocess.scale_to_unit,
                                    batch_sharding=mesh_lib.batch_sharding(mesh)),
                  donate_argnums=0)
  state = make_state(seed)
  for epoch in range(epochs):
    order = split.rows[batching.epoch_order(jax.random.key(seed), epoch, n, batch)]
    state, _ = chunk(state, split.arrays, order)
  return state


def test_same_seed_same_final_params_and_different_seed_differs():
  a, b, c = run_epochs(0), run_epochs(0), run_epochs(1)
  for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params)):
    np.testing.assert_array_equal(x, y)
  assert not np.array_equal(a.params["Dense_1"]["kernel"], c.params["Dense_1"]["kernel"])


_DEVICE_SCRIPT = r"""
import json, sys
import jax, jax.numpy as jnp, numpy as np, optax
from cnn_jax import mesh as mesh_lib, models, train
mesh = mesh_lib.make_mesh()
model = models.build_model("seed_cnn", num_classes=10)
state = jax.jit(lambda k: train.create_train_state(model, k, (28, 28, 1), optax.adam(1e-3)),
                out_shardings=mesh_lib.replicated(mesh))(jax.random.key(0))
rng = np.random.default_rng(0)
batch = {"image": rng.random((64, 28, 28, 1), np.float32),
         "label": rng.integers(0, 10, 64).astype(np.int32)}
batch = jax.device_put(batch, mesh_lib.batch_sharding(mesh))
step = jax.jit(train.train_step, donate_argnums=0)
losses = []
for _ in range(3):
  state, m = step(state, batch)
  losses.append(float(m["loss"]) / float(m["count"]))
print(json.dumps({"devices": jax.device_count(), "losses": losses,
                  "sharding": str(batch["image"].sharding.spec),
                  "kernel": np.asarray(state.params["Dense_1"]["kernel"]).ravel()[:8].tolist()}))
"""


def run_on_devices(n):
  env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={n}",
         "JAX_PLATFORMS": "cpu"}
  out = subprocess.run([sys.executable, "-c", _DEVICE_SCRIPT], env=env, cwd=ROOT,
                       capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-3000:]
  return json.loads(out.stdout.strip().splitlines()[-1])


def test_step_on_8_simulated_devices_matches_1_device():
  one, eight = run_on_devices(1), run_on_devices(8)
  assert one["devices"] == 1 and eight["devices"] == 8
  assert "data" in eight["sharding"]
  np.testing.assert_allclose(eight["losses"], one["losses"], rtol=1e-5)
  np.testing.assert_allclose(eight["kernel"], one["kernel"], rtol=1e-4, atol=1e-6)


def test_batch_size_must_divide_over_devices():
  eight = types.SimpleNamespace(devices=np.empty(8))
  mesh_lib.check_batch_size(32, eight)
  with pytest.raises(ValueError, match=r"batch_size=36 is not divisible by the 8 devices"):
    mesh_lib.check_batch_size(36, eight)
