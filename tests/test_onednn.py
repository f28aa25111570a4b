"""oneDNN's convolutions (models/onednn.py) against XLA's, to every derivative."""

import functools

import jax
import jax.numpy as jnp
from jax import lax
import numpy as np
import pytest

from cnn_jax import models
from cnn_jax.models import onednn

# (input shape, kernel shape, strides, padding): the zoo's layers in small.
CASES = [
    ((2, 9, 9, 3), (3, 3, 3, 5), (1, 1), ((1, 1), (1, 1))),
    ((2, 10, 10, 4), (3, 3, 4, 6), (2, 2), ((1, 1), (1, 1))),  # Downsampling.
    # Projection shortcut, with fewer than 8 input channels: oneDNN's own strided 1x1
    # kernel gradient wrote past its scratchpad here on AVX2 (models/onednn.py).
    ((3, 8, 8, 5), (1, 1, 5, 7), (2, 2), ((0, 0), (0, 0))),
    ((2, 9, 7, 3), (1, 1, 3, 4), (3, 2), ((1, 0), (0, 1))),  # Strided 1x1, padded.
    ((1, 11, 9, 2), (3, 2, 2, 3), (3, 2), ((0, 1), (2, 0))),  # Uneven everything.
]


def _reference(x, w, strides, padding):
  return lax.conv_general_dilated(x, w, strides, padding,
                                  dimension_numbers=("NHWC", "HWIO", "NHWC"))


def _operands(x_shape, w_shape):
  kx, kw, ktx, ktw = jax.random.split(jax.random.key(0), 4)
  return (jax.random.normal(kx, x_shape), jax.random.normal(kw, w_shape),
          jax.random.normal(ktx, x_shape), jax.random.normal(ktw, w_shape))


def _close(a, b, tol=2e-5):
  a, b = np.asarray(a), np.asarray(b)
  np.testing.assert_allclose(a, b, rtol=tol, atol=tol * float(np.abs(b).max()))


@pytest.fixture(autouse=True, scope="module")
def _built():
  assert onednn.available(), onednn.unavailable_reason()


@pytest.mark.parametrize("x_shape,w_shape,strides,padding", CASES)
def test_values_gradients_and_forward_mode_match_xla(x_shape, w_shape, strides, padding):
  x, w, tx, tw = _operands(x_shape, w_shape)
  ours = lambda x, w: onednn.conv(x, w, strides, padding)
  ref = lambda x, w: _reference(x, w, strides, padding)
  loss = lambda conv: lambda x, w: jnp.sum(jnp.sin(conv(x, w)))
  _close(jax.jit(ours)(x, w), ref(x, w))
  _close(ours(x, w), ref(x, w))  # Eagerly.
  for got, want in zip(jax.jit(jax.grad(loss(ours), (0, 1)))(x, w),
                       jax.grad(loss(ref), (0, 1))(x, w)):
    _close(got, want)
  _close(jax.jit(lambda *a: jax.jvp(loss(ours), a[:2], a[2:])[1])(x, w, tx, tw),
         jax.jvp(loss(ref), (x, w), (tx, tw))[1])
  # Under jax.vmap (per-example gradients): XLA's convolution, the same values.
  per_example = lambda conv: jax.vmap(jax.grad(loss(conv), 1), (0, None))
  _close(per_example(ours)(x[:, None], w), per_example(ref)(x[:, None], w))


@pytest.mark.parametrize("x_shape,w_shape,strides,padding", CASES[:2])
def test_second_derivatives_match_xla(x_shape, w_shape, strides, padding):
  x, w, tx, tw = _operands(x_shape, w_shape)
  loss = lambda conv: lambda x, w: jnp.sum(jnp.sin(conv(x, w, strides, padding)))
  ours, ref = loss(onednn.conv), loss(_reference)
  # Hessian-vector products, reverse over reverse and forward over reverse: all three
  # primitives and their transposes, on oneDNN.
  hvp = lambda f: lambda x, w, tx, tw: jax.jvp(jax.grad(f, (0, 1)), (x, w), (tx, tw))[1]
  for got, want in zip(jax.jit(hvp(ours))(x, w, tx, tw), hvp(ref)(x, w, tx, tw)):
    _close(got, want, 1e-4)
  grad_of_grad = lambda f: jax.grad(lambda x, w: jnp.sum(jax.grad(f, 1)(x, w) ** 2), 0)
  _close(jax.jit(grad_of_grad(ours))(x, w), grad_of_grad(ref)(x, w), 1e-4)
  small = lambda f: lambda w: f(x[:1], w)
  _close(jax.jit(jax.hessian(small(ours)))(w), jax.hessian(small(ref))(w), 1e-4)


def test_training_program_runs_every_primitive_on_onednn():
  x, w, _, _ = _operands(*CASES[0][:2])
  step = jax.grad(lambda x, w: jnp.sum(onednn.conv(x, w, (1, 1), ((1, 1), (1, 1))) ** 2),
                  (0, 1))
  hlo = jax.jit(step).lower(x, w).compile().as_text()
  for name in ("fwd", "bwd_data", "bwd_weights"):
    assert hlo.count(f'custom_call_target="cnn_jax_onednn_{name}"') == 1, name
  assert " convolution(" not in hlo


def test_other_dtypes_are_xla_convolutions():
  x, w, _, _ = _operands(*CASES[0][:2])
  x, w = x.astype(jnp.bfloat16), w.astype(jnp.bfloat16)
  conv = functools.partial(onednn.conv, strides=(1, 1), padding=((1, 1), (1, 1)))
  hlo = jax.jit(conv).lower(x, w).as_text()
  assert "custom_call" not in hlo and "convolution" in hlo
  _close(jax.jit(conv)(x, w).astype(jnp.float32),
         _reference(x, w, (1, 1), ((1, 1), (1, 1))).astype(jnp.float32), 1e-2)


def test_disabled_traces_xla_convolutions_and_costs_count_them():
  model = models.build_model("vgg_bn", 10)
  x = jnp.zeros((2, 28, 28, 1))
  variables = model.init(jax.random.key(0), x, train=False)
  apply = lambda: jax.jit(lambda v, x: model.apply(v, x, train=False)).lower(variables, x)
  assert "cnn_jax_onednn_fwd" in apply().as_text()
  with onednn.disabled():
    assert not onednn.available()
    assert "cnn_jax_onednn" not in apply().as_text()
  assert onednn.available()
  # XLA's count of VGG-BN's forward pass, as before oneDNN (docs/bench_latest.json):
  # the convolutions are counted although oneDNN runs them.
  assert models.summary(model, (28, 28, 1))["flops_per_image"] == 35_803_848


def test_build_failure_names_what_is_missing(monkeypatch, tmp_path):
  monkeypatch.setattr(onednn, "_library_path", lambda: tmp_path / "ext.so")
  monkeypatch.setenv("CXX", str(tmp_path / "no-such-compiler"))
  with pytest.raises(RuntimeError, match="no C.. compiler .*no-such-compiler.*CXX"):
    onednn.build()
  monkeypatch.setattr(onednn, "_prefix_dirs", lambda: (tmp_path / "include", tmp_path))
  monkeypatch.delenv("CXX")
  with pytest.raises(RuntimeError, match="oneDNN's headers are not in .*onednn-devel"):
    onednn.build()
  assert not (tmp_path / "ext.so").exists()


def test_nothing_is_built_where_the_default_backend_is_not_the_cpu(monkeypatch):
  # There the CPU branch of layers.conv_general_dilated is traced, never run.
  monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
  monkeypatch.setattr(onednn, "available", lambda: pytest.fail("oneDNN consulted"))
  model = models.build_model("vgg_bn", 10)
  x = jnp.zeros((2, 28, 28, 1))
  variables = model.init(jax.random.key(0), x, train=False)
  hlo = jax.jit(lambda v, x: model.apply(v, x, train=False)).lower(variables, x).as_text()
  assert "cnn_jax_onednn" not in hlo
