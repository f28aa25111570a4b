"""The fast CPU formulations in models/layers.py against XLA's own ops."""

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from cnn_jax import models
from cnn_jax import train
from cnn_jax.models import layers, onednn

SHAPES = [(1, 28, 28, 1), (3, 27, 27, 3), (1, 5, 7, 1), (3, 5, 7, 3), (2, 6, 9, 1)]


def _close(a, b, rtol=1e-5, atol=1e-5):
  np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=rtol, atol=atol)


@pytest.fixture(params=["onednn", "formulation"])
def cpu_convs(request):
  """Runs a test with oneDNN's convolutions (models/onednn.py) and with the formulation
  used without them. (Each test traces functions of its own: `onednn.disabled()`
  applies to what is traced within it.)"""
  if request.param == "onednn":
    assert onednn.available(), onednn.unavailable_reason()
    yield request.param
  else:
    with onednn.disabled():
      yield request.param


@pytest.mark.parametrize("shape", SHAPES)
def test_max_pool_matches_reference(shape):
  x = jax.random.normal(jax.random.key(0), shape)
  g = jax.random.normal(jax.random.key(1), layers.max_pool_2x2_reference(x).shape)
  for fast in (layers.max_pool_2x2_reshape, layers.max_pool_2x2):
    y, vjp = jax.vjp(jax.jit(fast), x)
    y_ref, vjp_ref = jax.vjp(layers.max_pool_2x2_reference, x)
    assert y.shape == (shape[0], shape[1] // 2, shape[2] // 2, shape[3])
    _close(y, y_ref, 0, 0)
    _close(vjp(g)[0], vjp_ref(g)[0], 0, 0)


def test_max_pool_ties_route_like_reference():
  # Ties are common after a ReLU; the gradient must go where XLA's would.
  x = jnp.round(jax.random.normal(jax.random.key(2), (2, 8, 6, 3)))
  x = jnp.maximum(x, 0.0).at[0, :2, :2, 0].set(1.0)
  g = jax.random.normal(jax.random.key(3), (2, 4, 3, 3))
  fast = jax.vjp(layers.max_pool_2x2, x)[1](g)[0]
  ref = jax.vjp(layers.max_pool_2x2_reference, x)[1](g)[0]
  _close(fast, ref, 0, 0)


def test_max_pool_of_other_ranks_uses_reference():
  x = jax.random.normal(jax.random.key(0), (4, 6, 2))
  _close(layers.max_pool_2x2(x), layers.max_pool_2x2_reference(x), 0, 0)


def _conv_loss(module):
  def loss(variables, x):
    return jnp.sum(jnp.sin(module.apply(variables, x)))
  return loss


@pytest.mark.parametrize("shape,padding", [
    ((1, 28, 28, 1), "VALID"), ((3, 27, 27, 3), "SAME"), ((3, 5, 7, 1), "VALID"),
    ((1, 5, 7, 3), "VALID"),
    ((2, 9, 10, 8), "SAME")])  # 3 * 3 * 8 > MAX_IM2COL_FEATURES: one matmul per tap.
def test_conv_matches_flax_conv(shape, padding, cpu_convs):
  x = jax.random.normal(jax.random.key(0), shape)
  fast, ref = (cls(8, (3, 3), padding=padding) for cls in (layers.Conv, nn.Conv))
  variables = ref.init(jax.random.key(1), x)
  _close(jax.jit(fast.apply)(variables, x), ref.apply(variables, x))
  grads = jax.jit(jax.grad(_conv_loss(fast), argnums=(0, 1)))(variables, x)
  grads_ref = jax.grad(_conv_loss(ref), argnums=(0, 1))(variables, x)
  jax.tree.map(lambda a, b: _close(a, b, 1e-4, 1e-4), grads, grads_ref)


@pytest.mark.parametrize("shape,kernel,strides,padding", [
    ((2, 28, 28, 3), (3, 3), 2, ((1, 1), (1, 1))),  # ResNet's downsampling conv.
    ((2, 7, 7, 16), (3, 3), 2, "SAME"),  # Odd size: the last block is partial.
    ((2, 9, 8, 3), (1, 1), 2, "VALID"),  # A projection shortcut.
    ((1, 15, 14, 3), (7, 7), 2, ((3, 3), (3, 3))),  # ResNet-18's stem.
    ((2, 10, 11, 2), (3, 2), (3, 2), ((0, 1), (2, 0))),  # Uneven everything.
    ((1, 12, 12, 3), (4, 4), 4, "VALID")])  # A ViT-style patch embedding.
def test_strided_conv_matches_flax_conv(shape, kernel, strides, padding, cpu_convs):
  x = jax.random.normal(jax.random.key(0), shape)
  fast, ref = (cls(5, kernel, strides=strides, padding=padding)
               for cls in (layers.Conv, nn.Conv))
  variables = ref.init(jax.random.key(1), x)
  _close(jax.jit(fast.apply)(variables, x), ref.apply(variables, x), 1e-5, 1e-5)
  grads = jax.jit(jax.grad(_conv_loss(fast), argnums=(0, 1)))(variables, x)
  grads_ref = jax.grad(_conv_loss(ref), argnums=(0, 1))(variables, x)
  jax.tree.map(lambda a, b: _close(a, b, 1e-4, 1e-4), grads, grads_ref)


def test_dilated_conv_uses_reference():
  x = jax.random.normal(jax.random.key(0), (2, 9, 9, 3))
  fast, ref = (cls(4, (3, 3), kernel_dilation=2) for cls in (layers.Conv, nn.Conv))
  variables = ref.init(jax.random.key(1), x)
  _close(jax.jit(fast.apply)(variables, x), ref.apply(variables, x))


def _cpu_hlo(fn, *args) -> str:
  """The optimised XLA:CPU program of `jax.jit(fn)(*args)`, whatever the default device."""
  with jax.default_device(jax.devices("cpu")[0]):
    return jax.jit(fn).lower(*args).compile().as_text()


def test_cpu_program_has_no_slow_native_ops():
  model = models.build_model("seed_cnn", 10)
  x = jnp.zeros((4, 28, 28, 1))
  variables = model.init(jax.random.key(0), x)
  hlo = _cpu_hlo(jax.grad(lambda v: jnp.sum(model.apply(v, x))), variables)
  assert "select-and-scatter" not in hlo
  assert "convolution(" not in hlo


def _loop_program(name, **kwargs) -> str:
  """The CPU program of two training steps of `name` in a `lax.scan`."""
  model = models.build_model(name, 10, **kwargs)
  state = train.create_train_state(model, jax.random.key(0), (28, 28, 1),
                                   optax.adam(1e-3))
  batches = {"image": jnp.zeros((2, 8, 28, 28, 1)), "label": jnp.zeros((2, 8), jnp.int32)}
  return _cpu_hlo(lambda s, b: jax.lax.scan(train.train_step, s, b), state, batches)


def _check_loop_convolutions(hlo, layers_after_stem, cpu_convs):
  """Forward pass, input and kernel gradients of each convolution after the first (on
  one channel, that one is elementwise, its input needs no gradient and its kernel
  gradient is one matmul): oneDNN's three custom calls each, or three plain NHWC x
  HWIO convolutions, never one with other dimension orders: inside a while loop
  XLA:CPU does not rewrite those into plain ones and runs them ~50x slower
  (jax-ml/jax#12868); nn.Conv's gradients are such convolutions."""
  convolutions = [line for line in hlo.splitlines() if " convolution(" in line]
  calls = {name: hlo.count(f'custom_call_target="cnn_jax_onednn_{name}"')
           for name in ("fwd", "bwd_data", "bwd_weights")}
  if cpu_convs == "onednn":
    assert calls == dict.fromkeys(calls, layers_after_stem), calls
    assert not convolutions, convolutions
  else:
    assert calls == dict.fromkeys(calls, 0), calls
    assert len(convolutions) == 3 * layers_after_stem, convolutions
    for line in convolutions:
      assert "dim_labels=b01f_01io->b01f" in line, line
  assert "select-and-scatter" not in hlo


def test_vgg_steps_in_a_loop_keep_only_plain_convolutions(cpu_convs):
  _check_loop_convolutions(_loop_program("vgg_bn"), 3, cpu_convs)


def test_resnet_steps_in_a_loop_keep_only_plain_convolutions(cpu_convs):
  # Its stride-2 convolutions too (oneDNN's own, or space-to-depth, then a stride-1
  # convolution).
  _check_loop_convolutions(_loop_program("resnet20", shortcut="pad"), 18, cpu_convs)


def test_seed_model_parameters_unchanged():
  model = models.build_model("seed_cnn", 10)
  variables = model.init(jax.random.key(0), jnp.zeros((1, 28, 28, 1)))
  shapes = jax.tree.map(jnp.shape, variables["params"])
  assert shapes["Conv_0"] == {"kernel": (3, 3, 1, 32), "bias": (32,)}
  assert sum(p.size for p in jax.tree.leaves(variables)) == 347_146


class _Tiny(nn.Module):
  """Two convolutions (one, then several input channels) around a max-pool."""
  conv: Any
  pool: Any

  @nn.compact
  def __call__(self, x):
    x = jnp.sin(self.conv(3, (3, 3), padding="SAME")(x))
    x = self.pool(x)
    return jnp.sum(jnp.tanh(self.conv(2, (2, 2), padding="VALID")(x)) ** 2)


REFERENCE = _Tiny(nn.Conv, layers.max_pool_2x2_reference)


def _fast():
  """The fast layers' _Tiny: a new instance per call, whose methods jit traces anew."""
  return _Tiny(layers.Conv, layers.max_pool_2x2)


def _tiny_inputs(shape=(2, 6, 6, 1)):
  x = jax.random.normal(jax.random.key(0), shape)
  return REFERENCE.init(jax.random.key(1), x), x


def test_forward_mode_matches_reference_layers(cpu_convs):
  variables, x = _tiny_inputs()
  fast = _fast()
  tangents = jax.tree.map(lambda v: jax.random.normal(jax.random.key(2), v.shape),
                          (variables, x))
  for jvp in (jax.jvp, jax.jit(jax.jvp, static_argnums=0)):
    out, tangent = jvp(fast.apply, (variables, x), tangents)
    out_ref, tangent_ref = jax.jvp(REFERENCE.apply, (variables, x), tangents)
    _close(out, out_ref)
    _close(tangent, tangent_ref, 1e-4, 1e-4)


@pytest.mark.parametrize("wrt", [
    "Conv_0/kernel", "Conv_0/bias", "Conv_1/kernel", "input"])
def test_hessian_matches_reference_layers(wrt, cpu_convs):
  variables, x = _tiny_inputs((1, 4, 4, 1))

  def loss(module, value):
    if wrt == "input":
      return module.apply(variables, value)
    layer, name = wrt.split("/")
    params = {**variables["params"],
              layer: {**variables["params"][layer], name: value}}
    return module.apply({"params": params}, x)

  if wrt == "input":
    value = x
  else:
    layer, name = wrt.split("/")
    value = variables["params"][layer][name]
  hessian = jax.jit(jax.hessian(functools.partial(loss, _fast())))(value)
  hessian_ref = jax.hessian(functools.partial(loss, REFERENCE))(value)
  assert hessian.shape == value.shape * 2
  _close(hessian, hessian_ref, 1e-4, 1e-4)
  assert float(jnp.abs(hessian_ref).max()) > 1e-3  # Not vacuous.


class _PoolNet(nn.Module):
  """The pattern where a max-pool gradient once went wrong under jit only."""
  pool: Any

  @nn.compact
  def __call__(self, x):
    x = nn.relu(nn.BatchNorm(use_running_average=False)(
        nn.Conv(8, (3, 3), use_bias=False)(x)))
    x = nn.Dropout(0.2, deterministic=False)(self.pool(x))
    return nn.Dense(10)(x.reshape(x.shape[0], -1))


def test_max_pool_gradient_in_a_jitted_network_matches_reference():
  x = jax.random.normal(jax.random.key(1), (4, 14, 14, 4))
  labels = jnp.arange(4)

  def grads(pool):
    model = _PoolNet(pool)
    variables = model.init({"params": jax.random.key(0), "dropout": jax.random.key(3)}, x)

    def loss(params):
      logits, _ = model.apply({**variables, "params": params}, x, mutable=["batch_stats"],
                              rngs={"dropout": jax.random.key(3)})
      return jnp.mean(train.cross_entropy(logits, labels))
    return jax.jit(jax.grad(loss))(variables["params"])

  jax.tree.map(lambda a, b: _close(a, b, 1e-5, 1e-6),
               grads(layers.max_pool_2x2), grads(layers.max_pool_2x2_reference))


def test_one_input_channel_is_multiply_add_when_differentiated_convolution_otherwise():
  """Training's forward pass with one input channel is a multiply-add over the taps
  (fused by XLA with the activation and pooling); evaluation's is XLA's convolution.
  Both give the reference's values."""
  x = jax.random.uniform(jax.random.key(0), (8, 28, 28, 1))
  w = jax.random.normal(jax.random.key(1), (3, 3, 1, 32))
  conv = lambda x, w: layers.conv_shifted(x, w, ((0, 0), (0, 0)))
  evaluated = jax.jit(conv).lower(x, w).as_text()
  assert evaluated.count("stablehlo.convolution") == 1
  trained = jax.jit(jax.value_and_grad(lambda w: jnp.sum(conv(x, w) ** 2))).lower(w)
  assert "convolution" not in trained.as_text()
  reference = layers._conv_valid_reference(x, w, None)
  np.testing.assert_allclose(jax.jit(conv)(x, w), reference, rtol=1e-5, atol=1e-6)
  primal, tangent = jax.jvp(conv, (x, w), (jnp.zeros_like(x), jnp.ones_like(w)))
  np.testing.assert_allclose(primal, reference, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(tangent, conv(x, jnp.ones_like(w)), rtol=1e-5, atol=1e-4)
