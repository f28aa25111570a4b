"""Mixed precision (config.dtype): activations, matmuls and convolutions in bfloat16;
parameters, gradients, optimizer state and the loss in float32."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.extend import core as jex_core

from cnn_jax import configs, metrics, models, run, train
from cnn_jax.errors import ConfigError
from cnn_jax import cpu
from tests.test_train import fixed_batch


def _floating(tree) -> set[str]:
  return {str(x.dtype) for x in jax.tree.leaves(tree)
          if jnp.issubdtype(x.dtype, jnp.floating)}


@pytest.mark.parametrize("name, kwargs", [
    *[(name, {}) for name in models.MODELS],
    ("vgg_bn", {"norm": "group"}), ("resnet20", {"norm": "layer"})])
def test_every_model_computes_in_bfloat16_with_float32_parameters(name, kwargs):
  model = models.build_model(name, 10, "bfloat16", **kwargs)
  x = jnp.zeros((2, 32, 32, 3), jnp.float32)

  def init_and_apply():  # Traced only (jax.eval_shape): the big models cost nothing.
    variables = model.init(jax.random.key(0), x, train=False)
    logits, state = model.apply(variables, x, train=True, capture_intermediates=True,
                                mutable=["intermediates", "batch_stats"],
                                rngs={"dropout": jax.random.key(1)})
    return variables, logits, state

  variables, logits, state = jax.eval_shape(init_and_apply)
  assert _floating(variables) == {"float32"}  # Params and BatchNorm statistics.
  assert logits.dtype == jnp.bfloat16
  outputs = jax.tree_util.tree_flatten_with_path(state["intermediates"])[0]
  assert len(outputs) > 3
  wide = [jax.tree_util.keystr(k) for k, v in outputs if v.dtype != jnp.bfloat16]
  assert not wide, f"{name}: outputs not in bfloat16: {wide}"


def _equations(jaxpr):
  """Every equation of `jaxpr` and of the jaxprs nested in it (scan, jit, custom_jvp,
  the branches of platform_dependent)."""
  yield from jaxpr.eqns
  for sub in jex_core.subjaxprs(jaxpr):
    yield from _equations(sub)


def _state(name, dtype, tx=None, ema=False):
  model = models.build_model(name, 10, dtype)
  return train.create_train_state(model, jax.random.key(0), (28, 28, 1),
                                   tx or optax.adam(1e-3), ema=ema)


@pytest.mark.parametrize("name", ["seed_cnn", "vgg_bn"])
def test_the_train_step_multiplies_in_bfloat16_and_keeps_its_state_float32(name):
  state, batch = _state(name, "bfloat16", ema=True), fixed_batch(8)
  step = jax.jit(lambda s, b: train.train_step(s, b, ema_decay=0.9))
  jaxpr = jax.make_jaxpr(step)(state, batch).jaxpr
  products = [e for e in _equations(jaxpr)
              if e.primitive.name in ("dot_general", "conv_general_dilated")]
  # Forward and backward.
  assert len(products) >= 6
  for e in products:
    assert {str(v.aval.dtype) for v in e.invars} == {"bfloat16"}, e
  new, sums = step(state, batch)
  new, sums = step(new, batch)
  for tree in (new.params, new.opt_state, new.ema_params, new.batch_stats):
    assert _floating(tree) <= {"float32"}
  assert _floating(new.params) == {"float32"}
  assert sums["loss"].dtype == jnp.float32 and np.isfinite(float(sums["loss"]))


def test_bfloat16_layers_fall_back_to_xla_and_return_float32_kernel_gradients():
  cpu.enable()
  x = jax.random.normal(jax.random.key(0), (4, 12, 12, 3))
  conv = nn.Conv(8, (3, 3), padding="SAME", dtype=jnp.bfloat16)
  params = conv.init(jax.random.key(1), x)

  def loss(params, x):
    y = nn.max_pool(conv.apply(params, x), (2, 2), (2, 2))
    assert y.dtype == jnp.bfloat16
    return jnp.sum(y.astype(jnp.float32) ** 2)

  assert conv.apply(params, x).dtype == jnp.bfloat16
  grad = jax.jit(jax.grad(loss, argnums=(0, 1)))
  # The CPU backend's kernels are float32: bfloat16 is lowered by XLA's own rules.
  assert "cnn_jax_" not in grad.lower(params, x).as_text()
  g_params, g_x = grad(params, x)
  assert _floating(g_params) == {"float32"} and g_x.dtype == jnp.float32


def _dispatch_losses(config, dispatch=25):
  """Training losses of each dispatch of `dispatch` steps over config.num_epochs, and
  the final evaluation's scalars."""
  exp = run.build_experiment(config)
  state, losses = run.stack([exp.state]), []  # The runner's stack of one run.
  only = lambda tree: jax.tree.map(lambda x: x[0], tree)
  for epoch in range(config.num_epochs):
    batches = exp.data.train_epoch(epoch)
    for start in range(0, exp.data.steps_per_epoch, dispatch):
      chunk = batches.take(start, min(start + dispatch, exp.data.steps_per_epoch))
      state, sums = exp.train_chunk(state, chunk.arrays, chunk.index[None])
      losses.append(metrics.summarize(only(sums), "train")["train_loss"])
  return np.array(losses), exp.evaluate_due(only(state))[0]


# Measured on this CPU (seed_cnn, mnist_5k, seed 0, dispatches of 25 steps): the
# bfloat16 losses were within 1.4% of float32's over the first epoch (3.4% over two,
# as the trajectories drift apart), test accuracy 0.948 and 0.947 after two epochs.
LOSS_RTOL = 0.05


def test_a_bfloat16_run_follows_the_float32_run(seed_config):
  results = {}
  for dtype in ("float32", "bfloat16"):
    config = seed_config.copy_and_resolve_references()
    config.dtype = dtype
    results[dtype] = _dispatch_losses(config)
  (f32, f32_eval), (bf16, bf16_eval) = results["float32"], results["bfloat16"]
  assert len(f32) == 5 and not np.array_equal(f32, bf16)  # Really another precision.
  np.testing.assert_allclose(bf16, f32, rtol=LOSS_RTOL)
  assert abs(bf16_eval["test_accuracy"] - f32_eval["test_accuracy"]) < 0.02


def test_dtype_belongs_in_config_dtype_not_model_kwargs():
  from experiments import seed_cnn  # pylint: disable=g-import-not-at-top
  config = seed_cnn.get_config()
  config.model_kwargs = {"dtype": "bfloat16"}
  with pytest.raises(ConfigError, match="set the computation dtype with --config.dtype"):
    configs.check(config, 1, 1)


def test_a_model_without_a_dtype_field_runs_in_float32_only(tmp_path, monkeypatch):
  (tmp_path / "plain_net.py").write_text(
      "import flax.linen as nn\n\n"
      "class Net(nn.Module):\n"
      "  num_classes: int\n\n"
      "  @nn.compact\n"
      "  def __call__(self, x, train=False):\n"
      "    return nn.Dense(self.num_classes)(x.reshape((x.shape[0], -1)))\n")
  monkeypatch.syspath_prepend(str(tmp_path))
  model = models.build_model("plain_net:Net", 10)  # float32: built as it is.
  assert not hasattr(model, "dtype")
  with pytest.raises(ConfigError, match="'plain_net:Net' has no `dtype` field"):
    models.build_model("plain_net:Net", 10, "bfloat16")


def test_checkpoints_from_before_dtype_resume_in_float32_only():
  class Info:
    image_shape, num_classes = (28, 28, 1), 10

  from experiments import seed_cnn  # pylint: disable=g-import-not-at-top
  config = seed_cnn.get_config()
  saved = run.fingerprint(config, Info)
  del saved["dtype"]  # Written before config.dtype existed.
  run.check_fingerprint(saved, run.fingerprint(config, Info), "wd")  # No error.
  config.dtype = "bfloat16"
  with pytest.raises(Exception, match="dtype: checkpoint has 'float32', config has "
                     "'bfloat16'"):
    run.check_fingerprint(saved, run.fingerprint(config, Info), "wd")
