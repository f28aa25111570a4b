"""The fused one-channel convolution, ReLU and max-pool (cnn_jax/cpu/conv_pool.py) and
the program rewrite that puts it in place (cnn_jax/cpu/fusion.py), against XLA's
layers, to every derivative."""

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax
import numpy as np
import optax
import pytest

from cnn_jax import cpu, models, train
from cnn_jax.cpu import conv_pool, fusion
from tests.test_cpu import _close, _enabled  # pylint: disable=unused-import

# (input shape, output channels): the tutorial's layer, a channel count that is not a
# whole number of vector blocks (8 or 16 channels: AVX2 or AVX-512), and odd sizes whose
# last row and column the pool drops.
CASES = [((4, 28, 28, 1), 32), ((3, 12, 12, 1), 33), ((2, 11, 10, 1), 5)]


def _layered(x, w, b):
  y = lax.conv_general_dilated(x, w, (1, 1), "VALID",
                               dimension_numbers=("NHWC", "HWIO", "NHWC"))
  return nn.max_pool(nn.relu(y + b), (2, 2), (2, 2))


def _operands(x_shape, c, seed=0):
  k = jax.random.split(jax.random.key(seed), 6)
  w_shape = (3, 3, 1, c)
  return [jax.random.normal(k[0], x_shape), 0.5 * jax.random.normal(k[1], w_shape),
          0.3 * jax.random.normal(k[2], (c,))], [
          jax.random.normal(k[3], x_shape), jax.random.normal(k[4], w_shape),
          jax.random.normal(k[5], (c,))]


def _custom_calls(fn, *args):
  hlo = jax.jit(fn).lower(*args).compile().as_text()
  return {name: hlo.count(f'custom_call_target="cnn_jax_conv_relu_pool_{name}"')
          for name in ("fwd", "kernel_grad", "bias_grad")}


@pytest.mark.parametrize("x_shape,c", CASES)
def test_values_and_gradients_match_xla_layers(x_shape, c):
  (x, w, b), _ = _operands(x_shape, c)
  fused = conv_pool.conv_relu_pool
  _close(jax.jit(fused)(x, w, b), _layered(x, w, b), 1e-6)
  _close(fused(x, w, b), _layered(x, w, b), 1e-6)  # Eagerly.
  loss = lambda f: lambda x, w, b: jnp.sum(jnp.sin(f(x, w, b)))
  got = jax.jit(jax.grad(loss(fused), (0, 1, 2)))(x, w, b)
  want = jax.grad(loss(_layered), (0, 1, 2))(x, w, b)
  for g, r in zip(got, want):
    assert g.shape == r.shape and g.dtype == r.dtype
    _close(g, r)
  # The forward pass and the kernel and bias gradients on the kernel; nothing else is.
  assert _custom_calls(jax.grad(loss(fused), (1, 2)), x, w, b) == {
      "fwd": 1, "kernel_grad": 1, "bias_grad": 1}


def test_ties_and_the_relu_route_the_gradient_as_xla_does():
  # Every window of a constant image ties; with a positive bias the first position
  # wins (select_and_scatter's choice), with a negative one the ReLU passes nothing.
  x = jnp.ones((2, 8, 8, 1))
  w = jnp.ones((3, 3, 1, 4)) * jnp.array([0.0, 0.0, 1.0, -1.0])
  b = jnp.array([1.0, -1.0, 0.0, 9.0])
  loss = lambda f: lambda x, w, b: jnp.sum(f(x, w, b) * jnp.arange(1.0, 5.0))
  _close(conv_pool.conv_relu_pool(x, w, b), _layered(x, w, b), 0)
  fused_grad = jax.jit(jax.grad(loss(conv_pool.conv_relu_pool), (0, 1, 2)))
  for got, want in zip(fused_grad(x, w, b),
                       jax.grad(loss(_layered), (0, 1, 2))(x, w, b)):
    np.testing.assert_array_equal(got, want)
  assert float(jnp.abs(jax.grad(loss(_layered), 1)(x, w, b)).max()) > 0  # Not vacuous.


@pytest.mark.parametrize("x_shape,c", CASES[1:])
def test_forward_mode_hessians_and_vmap_match_xla_layers(x_shape, c):
  (x, w, b), (tx, tw, tb) = _operands(x_shape, c)
  fused = conv_pool.conv_relu_pool
  loss = lambda f: lambda x, w, b: jnp.sum(jnp.sin(f(x, w, b)))
  _close(jax.jit(lambda *a: jax.jvp(loss(fused), a[:3], a[3:])[1])(x, w, b, tx, tw, tb),
         jax.jvp(loss(_layered), (x, w, b), (tx, tw, tb))[1])
  small = (x[:1, :6, :6], w[..., :2], b[:2])
  for argnum in (0, 1, 2):
    hessian = jax.jit(jax.hessian(loss(fused), argnum))(*small)
    want = jax.hessian(loss(_layered), argnum)(*small)
    _close(hessian, want, 1e-4)
    assert float(jnp.abs(want).max()) > 1e-3  # Not vacuous.
  # Per-example gradients under jax.vmap: XLA's layers, the same values.
  per_example = lambda f: jax.vmap(jax.grad(loss(f), 1), (0, None, None))
  _close(per_example(fused)(x[:, None], w, b), per_example(_layered)(x[:, None], w, b))


def test_transposes_are_adjoint():
  # <sel(x, w), c> = <x, input_grad(c, w)> = <w, kernel_grad(x, c)> for fixed winners.
  (x, w, b), (tx, tw, _) = _operands((3, 14, 12, 1), 20)
  _, win = conv_pool.fwd_p.bind(x, w, b)
  c = jax.random.normal(jax.random.key(9), win.shape)
  sel = jax.jit(conv_pool._sel)(tx, tw, win)
  kernel_grad = jax.jit(conv_pool._kernel_grad, static_argnums=3)(tx, c, win, w.shape)
  input_grad = jax.jit(conv_pool._input_grad, static_argnums=3)(c, tw, win, x.shape)
  inner = float(jnp.vdot(sel, c))
  assert abs(inner) > 1
  np.testing.assert_allclose(float(jnp.vdot(tw, kernel_grad)), inner, rtol=1e-5)
  np.testing.assert_allclose(float(jnp.vdot(tx, input_grad)), inner, rtol=1e-5)
  tb = jax.random.normal(jax.random.key(10), (20,))
  bias_inner = float(jnp.vdot(jax.jit(conv_pool.bias_sel_p.bind)(tb, win), c))
  assert abs(bias_inner) > 1
  np.testing.assert_allclose(
      float(jnp.vdot(tb, jax.jit(conv_pool.bias_grad_p.bind)(c, win))), bias_inner,
      rtol=1e-5)


def test_the_kernel_gradient_is_the_same_every_time():
  (x, w, b), _ = _operands((37, 28, 28, 1), 32, seed=3)
  grad = jax.jit(jax.grad(lambda w: jnp.sum(conv_pool.conv_relu_pool(x, w, b) ** 2)))
  first = np.asarray(grad(w))
  for _ in range(3):
    np.testing.assert_array_equal(np.asarray(grad(w)), first)


class FirstLayer(nn.Module):
  """The tutorial's first layer as flax writes it, then a layer that keeps it honest."""
  features: int = 6
  dtype: object = None

  @nn.compact
  def __call__(self, x):
    x = nn.relu(nn.Conv(self.features, (3, 3), padding="VALID", dtype=self.dtype)(x))
    return nn.max_pool(x, (2, 2), strides=(2, 2))


def _fused_eqns(fn, *args):
  return [e.primitive.name
          for e in fusion.rewrite(jax.make_jaxpr(fn)(*args).jaxpr).eqns]


def test_the_rewrite_fuses_flax_layers_into_the_kernel_and_keeps_the_function():
  x = jax.random.normal(jax.random.key(0), (2, 10, 10, 1))
  model = FirstLayer()
  variables = model.init(jax.random.key(1), x)
  assert _fused_eqns(model.apply, variables, x) == ["conv_relu_pool_fwd"]
  fused = cpu.fuse(model.apply)
  assert fused == cpu.fuse(model.apply) and cpu.fuse(fused) is fused
  want = jax.jit(model.apply)(variables, x)
  _close(jax.jit(fused)(variables, x), want, 1e-6)
  loss = lambda f: lambda v: jnp.sum(jnp.sin(f(v, x)))
  _close(jax.jit(jax.grad(loss(fused)))(variables),
         jax.jit(jax.grad(loss(model.apply)))(variables))
  assert _custom_calls(jax.grad(loss(fused)), variables) == {
      "fwd": 1, "kernel_grad": 1, "bias_grad": 1}
  # Where the backend is off, `fuse` calls the function itself.
  with cpu.disabled():
    assert _custom_calls(lambda v: fused(v, x), variables) == {
        "fwd": 0, "kernel_grad": 0, "bias_grad": 0}


def test_the_rewrite_leaves_what_the_kernel_does_not_compute():
  x = jax.random.normal(jax.random.key(0), (2, 10, 10, 1))
  half = FirstLayer(dtype=jnp.bfloat16)
  assert "conv_relu_pool_fwd" not in _fused_eqns(
      half.apply, half.init(jax.random.key(1), x), x)
  x3 = jnp.ones((2, 10, 10, 3))  # Three input channels: oneDNN's convolution.
  model = FirstLayer()
  assert "conv_relu_pool_fwd" not in _fused_eqns(
      model.apply, model.init(jax.random.key(1), x3), x3)

  def also_used(v, x):  # The activation is read twice: nothing to keep out of memory.
    y = nn.relu(nn.Conv(6, (3, 3), padding="VALID").apply(v, x))
    return nn.max_pool(y, (2, 2), (2, 2)), y

  variables = nn.Conv(6, (3, 3), padding="VALID").init(jax.random.key(1), x)
  assert "conv_relu_pool_fwd" not in _fused_eqns(also_used, variables, x)


def test_the_tutorial_cnn_trains_with_the_kernel_as_with_xla_layers():
  model = models.build_model("seed_cnn", 10)
  state = train.create_train_state(model, jax.random.key(0), (28, 28, 1),
                                   optax.adam(1e-3))
  batches = {"image": jax.random.uniform(jax.random.key(1), (3, 16, 28, 28, 1)),
             "label": jax.random.randint(jax.random.key(2), (3, 16), 0, 10)}
  steps = lambda s, b: lax.scan(train.train_step, s, b)[1]["loss"]
  assert _custom_calls(steps, state, batches)["fwd"] == 1
  _close(jax.jit(steps)(state, batches),
         jax.jit(steps)(state.replace(apply_fn=model.apply), batches), 1e-5)
