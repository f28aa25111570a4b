import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from cnn_jax import models
from cnn_jax import testing
from cnn_jax import train
from cnn_jax.models.vgg import VGGBN

# A small variant for the tests that run steps: same structure, compiles fast.
SMALL = {"widths": (4, 8), "hidden": 16}


def count(tree):
  return sum(x.size for x in jax.tree.leaves(tree))


def abstract_variables(model, shape):
  return jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros(shape), train=False))


def test_registered_as_vgg_bn():
  assert isinstance(models.build_model("vgg_bn", num_classes=10), VGGBN)


def test_parameter_count_on_fashion_mnist_shapes():
  variables = abstract_variables(models.build_model("vgg_bn", num_classes=10),
                                 (1, 28, 28, 1))
  # Convs (3x3, no bias; BN scale+bias per channel):
  #   1->32: 288 + 64, 32->32: 9,216 + 64, 32->64: 18,432 + 128, 64->64: 36,864 + 128
  #   = 65,184.
  # Pools 28 -> 14 -> 7: flatten 7*7*64 = 3,136. Dense 3,136->256 (no bias): 802,816,
  # BN 512. Dense 256->10: 2,560 + 10 = 2,570. Total 65,184 + 803,328 + 2,570.
  assert count(variables["params"]) == 871_082
  # Running mean and variance of every BatchNorm: 2 * (32 + 32 + 64 + 64 + 256).
  assert count(variables["batch_stats"]) == 896
  assert variables["params"]["Dense_0"]["kernel"].shape == (3136, 256)


def test_output_shapes_follow_input_and_classes():
  model = models.build_model("vgg_bn", num_classes=7, widths=(8, 16, 32), hidden=32)
  x = jnp.zeros((3, 32, 32, 3))
  variables = abstract_variables(model, x.shape)
  for train_mode in (False, True):
    out = jax.eval_shape(
        lambda v, x, t=train_mode: model.apply(v, x, train=t, mutable=["batch_stats"],
                                               rngs={"dropout": jax.random.key(0)})[0],
        variables, x)
    assert out.shape == (3, 7) and out.dtype == jnp.float32
  # Three pools: 32 -> 16 -> 8 -> 4.
  assert variables["params"]["Dense_0"]["kernel"].shape == (4 * 4 * 32, 32)


# Compiling is most of these tests' time: one state and one jitted step serve them all.
@pytest.fixture(scope="module")
def state():
  model = models.build_model("vgg_bn", num_classes=10, **SMALL)
  create = functools.partial(train.create_train_state, model, image_shape=(28, 28, 1),
                             tx=optax.adam(1e-2))
  return jax.jit(create)(jax.random.key(0))


def fixed_batch(n=16, seed=0):
  rng = np.random.default_rng(seed)
  return {"image": jnp.asarray(rng.random((n, 28, 28, 1), np.float32)),
          "label": jnp.asarray(rng.integers(0, 10, n), jnp.int32)}


@pytest.fixture(scope="module")
def step():
  return jax.jit(chex.assert_max_traces(train.train_step, n=1))


def test_small_variant_passes_every_check():
  # BatchNorm statistics move in training and not in evaluation, dropout masks change
  # with the step and repeat for the same step, 1 device equals 8: cnn_jax.testing.
  report = testing.check_model("vgg_bn", (28, 28, 1), 10, model_kwargs=SMALL)
  assert report["batch_stats"] == report["dropout"] == report["devices"] == "ok"
  assert report["num_batch_stats"] == 2 * (4 + 4 + 8 + 8 + 16)


def test_jitted_step_lowers_the_loss_and_traces_once(state, step):
  batch = fixed_batch()
  losses = []
  for _ in range(12):
    state, metrics = step(state, batch)
    losses.append(float(metrics["loss"] / metrics["count"]))
  assert losses[-1] < 0.5 * losses[0], losses
  assert int(state.step) == 12


def test_a_conv_count_per_block():
  """convs_per_block as one count per block: one conv in each of two blocks."""
  model = models.build_model("vgg_bn", 10, widths=(32, 64), convs_per_block=(1, 1),
                             dropout_rate=0.0, head_dropout_rate=0.0)
  variables = abstract_variables(model, (1, 28, 28, 1))
  # 1->32: 288 + 64, 32->64: 18,432 + 128; pools 28 -> 14 -> 7: Dense 3,136->256
  # (no bias) 802,816 + BN 512; Dense 256->10: 2,570.
  assert count(variables["params"]) == 824_810
  assert sorted(variables["params"]) == ["BatchNorm_0", "BatchNorm_1", "BatchNorm_2",
                                         "Conv_0", "Conv_1", "Dense_0", "Dense_1"]
  uneven = models.build_model("vgg_bn", 10, widths=(8, 16), convs_per_block=(1, 2))
  params = abstract_variables(uneven, (1, 28, 28, 1))["params"]
  assert [params[f"Conv_{i}"]["kernel"].shape for i in range(3)] == [
      (3, 3, 1, 8), (3, 3, 8, 16), (3, 3, 16, 16)]
  with pytest.raises(ValueError, match=r"gives 3 counts for 2 blocks"):
    abstract_variables(models.build_model("vgg_bn", 10, widths=(8, 16),
                                          convs_per_block=(1, 2, 1)), (1, 28, 28, 1))
