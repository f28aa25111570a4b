"""The CPU backend (cnn_jax/cpu) against XLA's own lowerings: drawn convolutions and
pools (hypothesis), plain-Flax models trained both ways, the compiled programs."""

import flax.linen as nn
import hypothesis
from hypothesis import strategies as st
import jax
import jax.numpy as jnp
from jax import lax
import numpy as np
import optax
import pytest

from cnn_jax import cpu
from cnn_jax import models
from cnn_jax import train
from cnn_jax.cpu import build


@pytest.fixture(autouse=True, scope="module")
def _enabled():
  assert cpu.enable(), cpu.unavailable_reason()


def _both(make, *args):
  """`make()`'s function jitted with the backend and with XLA's own lowerings (a fresh
  function each, so each is traced and lowered anew), run on `args`."""
  ours = jax.jit(make())(*args)
  with cpu.disabled():
    xla = jax.jit(make())(*args)
  return ours, xla


def _close(got, want, tol=2e-5):
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    np.testing.assert_allclose(a, b, rtol=tol, atol=tol * max(1.0, float(np.abs(b).max())))


def _hlo(f, *args) -> str:
  return jax.jit(f).lower(*args).compile().as_text()


def _derivatives(f, x, w, tx, tw):
  """Value, reverse-mode gradients, a jvp, per-example (vmapped) kernel gradients and
  gradients inside `lax.scan`, of sum(sin(f(x, w)))."""
  loss = lambda x, w: jnp.sum(jnp.sin(f(x, w)))
  grads = jax.grad(loss, (0, 1))
  per_example = jax.vmap(jax.grad(loss, 1), (0, None))(x[:, None], w)
  scanned = lax.scan(lambda c, _: (c, grads(x, w)), 0.0, None, length=2)[1]
  return f(x, w), grads(x, w), jax.jvp(loss, (x, w), (tx, tw))[1], per_example, scanned


@st.composite
def convolutions(draw):
  """A 2-D NHWC x HWIO convolution of flax's kind: groups (depthwise included),
  strides, kernel dilation, padding by name or explicit, odd channel counts."""
  groups = draw(st.sampled_from([1, 1, 2, 3, "depthwise"]))
  cin_per = 1 if groups == "depthwise" else draw(st.integers(1, 5))
  groups = draw(st.integers(2, 6)) if groups == "depthwise" else groups
  cout = groups * draw(st.integers(1, 3))
  kh, kw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
  strides = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
  dilation = (draw(st.integers(1, 3)), draw(st.integers(1, 2)))
  padding = draw(st.one_of(
      st.sampled_from(["SAME", "VALID"]),
      st.tuples(st.tuples(st.integers(0, 3), st.integers(0, 3)),
                st.tuples(st.integers(0, 3), st.integers(0, 3)))))
  h, w = draw(st.integers(1, 12)), draw(st.integers(1, 12))
  pads = (lax.padtype_to_pads((h, w), ((kh - 1) * dilation[0] + 1,
                                       (kw - 1) * dilation[1] + 1), strides, padding)
          if isinstance(padding, str) else padding)
  hypothesis.assume(all(size + lo + hi >= (k - 1) * d + 1 for size, (lo, hi), k, d
                        in zip((h, w), pads, (kh, kw), dilation)))
  return dict(x_shape=(draw(st.integers(1, 3)), h, w, groups * cin_per),
              w_shape=(kh, kw, cin_per, cout), strides=strides, padding=padding,
              dilation=dilation, groups=groups)


@hypothesis.given(convolutions())
def test_drawn_convolutions_match_xla_to_every_derivative(case):
  keys = jax.random.split(jax.random.key(0), 4)
  x, tx = (jax.random.normal(k, case["x_shape"]) for k in keys[:2])
  w, tw = (jax.random.normal(k, case["w_shape"]) for k in keys[2:])

  def conv(x, w):
    return lax.conv_general_dilated(
        x, w, case["strides"], case["padding"], rhs_dilation=case["dilation"],
        feature_group_count=case["groups"], dimension_numbers=("NHWC", "HWIO", "NHWC"))

  make = lambda: lambda *a: _derivatives(conv, *a)
  ours, xla = _both(make, x, w, tx, tw)
  _close(ours, xla)
  # Every convolution that JAX's rules emit for these (the forward pass, both
  # transposes, the jvp, the vmapped grouped form) ran on oneDNN; a strided one's
  # input gradient on its backward-data convolution.
  hlo = _hlo(make(), x, w, tx, tw)
  assert "convolution(" not in hlo
  assert 'custom_call_target="cnn_jax_onednn_fwd"' in hlo
  assert (case["strides"] != (1, 1)) == (
      'custom_call_target="cnn_jax_onednn_bwd_data"' in hlo)


@st.composite
def pools(draw):
  window = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
  strides = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
  padding = draw(st.sampled_from(["SAME", "VALID", ((1, 0), (0, 1)), ((1, 1), (1, 1))]))
  if not isinstance(padding, str):  # No window of padding alone.
    hypothesis.assume(all(k > max(p) for k, p in zip(window, padding)))
  h, w = draw(st.integers(3, 10)), draw(st.integers(3, 10))
  return dict(shape=(draw(st.integers(1, 3)), h, w, draw(st.integers(1, 9))),
              window=window, strides=strides, padding=padding)


@hypothesis.given(pools())
def test_drawn_max_pools_match_xla_to_every_derivative(case):
  keys = jax.random.split(jax.random.key(1), 2)
  x, tx = (jax.random.normal(k, case["shape"]) for k in keys)
  w = jnp.ones(())  # pools have no kernel; `_derivatives` wants a second argument.
  pool = lambda x, w: w * nn.max_pool(x, case["window"], case["strides"], case["padding"])
  make = lambda: lambda *a: _derivatives(pool, *a)
  ours, xla = _both(make, x, w, tx, jnp.ones(()))
  _close(ours, xla, 1e-6)
  hlo = _hlo(make(), x, w, tx, jnp.ones(()))
  assert "cnn_jax_max_pool_grad" in hlo and "select-and-scatter" not in hlo


def test_max_pool_gradient_ties_go_to_the_first_maximum_as_xla():
  # After a ReLU most windows tie at zero.
  x = nn.relu(jax.random.normal(jax.random.key(2), (4, 8, 8, 5)))
  for window, strides in (((2, 2), (2, 2)), ((3, 3), (2, 2)), ((3, 3), (1, 1))):
    make = lambda: jax.grad(lambda x: jnp.sum(
        jnp.sin(nn.max_pool(x, window, strides, "SAME"))))
    ours, xla = _both(make, x)
    np.testing.assert_array_equal(ours, xla)


@pytest.mark.parametrize("f", [
    lambda x, w: lax.conv_general_dilated(x, w, (2, 1), ((1, 0), (2, 1)),
                                          dimension_numbers=("NHWC", "HWIO", "NHWC")),
    lambda x, w: lax.conv_general_dilated(x, w[..., :2, :], (1, 1), "SAME",
                                          feature_group_count=2,
                                          dimension_numbers=("NHWC", "HWIO", "NHWC"))])
def test_second_derivatives_match_xla(f):
  x = jax.random.normal(jax.random.key(3), (2, 7, 6, 4))
  w = jax.random.normal(jax.random.key(4), (3, 2, 4, 6))
  tx, tw = jax.random.normal(jax.random.key(5), x.shape), jax.random.normal(
      jax.random.key(6), w.shape)
  loss = lambda x, w: jnp.sum(jnp.sin(f(x, w)))
  hvp = lambda: lambda *a: jax.jvp(jax.grad(loss, (0, 1)), a[:2], a[2:])[1]
  _close(*_both(hvp, x, w, tx, tw), 1e-4)
  hessian = lambda: jax.hessian(lambda w: loss(x[:1], w))
  _close(*_both(hessian, w), 1e-4)


def test_other_layouts_and_dtypes_fall_back_to_xla_per_call():
  x = jax.random.normal(jax.random.key(0), (2, 3, 9, 9))  # NCHW
  w = jax.random.normal(jax.random.key(1), (5, 3, 3, 3))  # OIHW
  nchw = lambda: lambda x, w: lax.conv_general_dilated(x, w, (1, 1), "SAME")
  _close(*_both(nchw, x, w))  # Transposed onto oneDNN's layouts.
  half = (x.astype(jnp.bfloat16), w.astype(jnp.bfloat16))
  assert "cnn_jax" not in _hlo(nchw(), *half)
  one_d = lambda x, w: lax.conv_general_dilated(x[..., 0], w[..., 0], (1,), "SAME")
  assert "cnn_jax" not in _hlo(one_d, x, w)
  min_pool = lambda x: jax.grad(lambda x: jnp.sum(lax.reduce_window(
      x, jnp.inf, lax.min, (1, 1, 2, 2), (1, 1, 2, 2), "VALID")))(x)
  assert "cnn_jax" not in _hlo(min_pool, x)  # Not a >= select: XLA's own.


class PlainNet(nn.Module):
  """What a researcher writes: depthwise, strided, dilated convolutions, GroupNorm,
  BatchNorm, both pools, nothing of cnn_jax."""
  num_classes: int = 10

  @nn.compact
  def __call__(self, x, train: bool):
    x = nn.Conv(16, (3, 3))(x)
    x = nn.relu(nn.GroupNorm(num_groups=4)(x))
    x = nn.Conv(16, (3, 3), (2, 2), feature_group_count=16, use_bias=False)(x)
    x = nn.relu(nn.BatchNorm(use_running_average=not train)(x))
    x = nn.max_pool(x, (3, 3), (2, 2), padding="SAME")
    x = nn.Conv(24, (3, 3), kernel_dilation=2)(x)
    x = nn.avg_pool(nn.relu(x), (2, 2), (2, 2))
    return nn.Dense(self.num_classes)(x.reshape(x.shape[0], -1))


def _train_losses(steps: int = 5):
  state = train.create_train_state(PlainNet(), jax.random.key(0), (28, 28, 1),
                                   optax.adam(1e-3))
  batch = {"image": jax.random.uniform(jax.random.key(1), (16, 28, 28, 1)),
           "label": jax.random.randint(jax.random.key(2), (16,), 0, 10)}
  batches = jax.tree.map(lambda a: jnp.stack([a] * steps), batch)  # One batch, again.
  return lambda: lambda s, b: lax.scan(train.train_step, s, b)[1]["loss"], state, batches


def test_a_plain_flax_model_trains_alike_with_the_backend_on_and_off():
  make, state, batches = _train_losses()
  ours, xla = _both(make, state, batches)
  _close(ours, xla, 1e-5)
  assert float(ours[-1]) < float(ours[0])


def test_a_plain_flax_training_loop_has_no_slow_cpu_ops():
  make, state, batches = _train_losses(2)
  hlo = _hlo(make(), state, batches)
  # In a while loop, XLA:CPU runs convolutions with unusual dimension orders (nn.Conv's
  # gradients) up to 50x slower (jax-ml/jax#12868), and its select-and-scatter is a
  # scalar loop: none of either is left.
  assert "convolution(" not in hlo and "select-and-scatter" not in hlo
  assert hlo.count('custom_call_target="cnn_jax_onednn_bwd_weights"') == 3
  assert hlo.count('custom_call_target="cnn_jax_max_pool_grad"') == 1


@pytest.mark.parametrize("name,kwargs,convs,strided", [
    ("vgg_bn", {}, 4, 0), ("resnet20", {"shortcut": "pad"}, 19, 2)])
def test_zoo_training_loops_run_every_convolution_on_onednn(name, kwargs, convs, strided):
  model = models.build_model(name, 10, **kwargs)
  state = train.create_train_state(model, jax.random.key(0), (28, 28, 1),
                                   optax.adam(1e-3))
  batches = {"image": jnp.zeros((2, 8, 28, 28, 1)), "label": jnp.zeros((2, 8), jnp.int32)}
  hlo = _hlo(lambda s, b: lax.scan(train.train_step, s, b), state, batches)
  calls = {kind: hlo.count(f'custom_call_target="cnn_jax_onednn_{kind}"')
           for kind in ("fwd", "bwd_data", "bwd_weights")}
  # The first convolution's input (the data) needs no gradient; a stride-1
  # convolution's input gradient is a forward convolution, a strided one's oneDNN's
  # backward data.
  assert calls == {"fwd": 2 * convs - 1 - strided, "bwd_data": strided,
                   "bwd_weights": convs}, calls
  assert "convolution(" not in hlo and "select-and-scatter" not in hlo


def test_costs_count_xla_convolutions_with_the_backend_on():
  model = models.build_model("vgg_bn", 10)
  x = jnp.zeros((2, 28, 28, 1))
  variables = jax.eval_shape(lambda: model.init(jax.random.key(0), x, train=False))
  apply = lambda: jax.jit(lambda v, x: model.apply(v, x, train=False)).lower(variables, x)
  assert "cnn_jax_onednn_fwd" in apply().as_text()
  with cpu.disabled():
    assert not cpu.active() and "cnn_jax" not in apply().as_text()
  assert cpu.active()
  # XLA's count of VGG-BN's forward pass (docs/bench_latest.json): the convolutions
  # are counted although oneDNN runs them.
  assert models.summary(model, (28, 28, 1))["flops_per_image"] == 35_803_848


def test_exported_programs_hold_no_custom_calls():
  f = jax.jit(lambda x: nn.max_pool(x, (2, 2), (2, 2)) * 2)
  g = jax.jit(jax.grad(lambda x, w: jnp.sum(lax.conv_general_dilated(
      x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))), (0, 1)))
  x, w = jnp.ones((1, 6, 6, 2)), jnp.ones((3, 3, 2, 2))
  for fn, args in ((f, (x,)), (g, (x, w))):
    assert "cnn_jax" not in jax.export.export(fn, platforms=["cpu"])(*args).mlir_module()


def test_gpu_programs_are_untouched():
  f = jax.jit(jax.grad(lambda x, w: jnp.sum(nn.max_pool(lax.conv_general_dilated(
      x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")), (2, 2),
      (2, 2))), (0, 1)))
  x, w = jnp.ones((1, 6, 6, 2)), jnp.ones((3, 3, 2, 2))
  text = f.trace(x, w).lower(lowering_platforms=("cuda",)).as_text()
  assert "cnn_jax" not in text and "convolution" in text


def test_turned_off_by_the_environment(monkeypatch):
  monkeypatch.setenv(cpu.ENV, "0")
  assert not cpu.enable()
  assert "CNN_JAX_ONEDNN=0" in cpu.unavailable_reason()


def test_build_failure_names_what_is_missing(monkeypatch, tmp_path):
  monkeypatch.setattr(build, "_library_path", lambda: tmp_path / "ext.so")
  monkeypatch.setenv("CXX", str(tmp_path / "no-such-compiler"))
  with pytest.raises(RuntimeError, match="no C.. compiler .*no-such-compiler.*CXX"):
    build.build()
  monkeypatch.setattr(build, "_prefix_dirs", lambda: (tmp_path / "include", tmp_path))
  monkeypatch.delenv("CXX")
  with pytest.raises(RuntimeError, match="oneDNN's headers are not in .*onednn-devel"):
    build.build()
  assert not (tmp_path / "ext.so").exists()
