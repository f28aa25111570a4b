"""FastCNN (models/fast_cnn.py), the speedrun's network: its facts, and that the CPU
backend fuses its first layer without the model knowing."""

import flax.linen as nn
import jax
from jax import lax
import jax.numpy as jnp
import numpy as np
import optax

from cnn_jax import cpu
from cnn_jax import models
from cnn_jax import train


def test_the_speedrun_network_has_its_parameters():
  from experiments import speedrun_fashion_mnist  # pylint: disable=g-import-not-at-top
  config = speedrun_fashion_mnist.get_config()
  model = models.build_model(config.model, 10, **config.model_kwargs)
  summary = models.summary(model, (28, 28, 1))
  # Conv 1->32 with bias: 320; Conv 32->64: 18,432 + BN 128; pools 28 -> 14 -> 7:
  # Dense 3,136->256 (no bias) 802,816 + BN 512; Dense 256->10: 2,570.
  assert summary["params"] == 824_778 and summary["batch_stats"] == 640
  variables = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 28, 28, 1)),
                                                train=False))
  assert sorted(variables["params"]) == ["BatchNorm_0", "BatchNorm_1", "Conv_0", "Conv_1",
                                         "Dense_0", "Dense_1"]


def test_the_first_layer_is_a_same_convolution():
  """Padding the image by one pixel, then a VALID convolution (the form the fused
  kernel computes), is flax's SAME convolution."""
  model = models.build_model("fast_cnn", 10, widths=(8,), hidden=16)
  x = jax.random.uniform(jax.random.key(1), (2, 28, 28, 1))
  variables = model.init(jax.random.key(0), x, train=False)
  conv = variables["params"]["Conv_0"]
  same = nn.Conv(8, (3, 3), padding="SAME").apply({"params": conv}, x)
  features = model.apply(variables, x, train=False, capture_intermediates=True,
                         mutable=["intermediates"])[1]["intermediates"]["Conv_0"]
  assert same.shape == (2, 28, 28, 8)
  np.testing.assert_allclose(features["__call__"][0], same, rtol=1e-6, atol=1e-6)


def test_its_first_layer_runs_fused_and_trains_as_with_xla():
  """The CPU backend finds the tutorial's first layer in the plain-Flax model's
  program (one kernel, the 28x28 activation never written) and the losses of a few
  steps match XLA's own lowerings."""
  model = models.build_model("fast_cnn", 10, widths=(16, 32), hidden=32)
  state = train.create_train_state(model, jax.random.key(0), (28, 28, 1), optax.adam(1e-3))
  batch = {"image": jax.random.uniform(jax.random.key(1), (3, 16, 28, 28, 1)),
           "label": jax.random.randint(jax.random.key(2), (3, 16), 0, 10)}
  losses = lambda s, b: lax.scan(train.train_step, s, b)[1]["loss"]
  assert cpu.enable(), cpu.unavailable_reason()
  hlo = jax.jit(losses).lower(state, batch).compile().as_text()
  assert hlo.count('custom_call_target="cnn_jax_conv_relu_pool_fwd"') == 1
  assert hlo.count('custom_call_target="cnn_jax_conv_relu_pool_kernel_grad"') == 1
  assert "convolution(" not in hlo and "select-and-scatter" not in hlo
  ours = jax.jit(losses)(state, batch)
  with cpu.disabled():
    xla = jax.jit(losses)(state, batch)
  np.testing.assert_allclose(ours, xla, rtol=2e-5)
  assert float(ours[-1]) < float(ours[0])
