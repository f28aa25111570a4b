import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest

from cnn_jax import models


def param_shapes(model, shape):
  variables = jax.eval_shape(
      lambda: model.init(jax.random.key(0), jnp.zeros(shape), train=False))
  return jax.tree.map(lambda x: x.shape, variables["params"])


def test_seed_cnn_has_keras_parameter_count():
  model = models.build_model("seed_cnn", num_classes=10)
  shapes = param_shapes(model, (1, 28, 28, 1))
  assert shapes == {
      "Conv_0": {"kernel": (3, 3, 1, 32), "bias": (32,)},
      "Dense_0": {"kernel": (13 * 13 * 32, 64), "bias": (64,)},
      "Dense_1": {"kernel": (64, 10), "bias": (10,)},
  }
  count = sum(x.size for x in jax.tree.leaves(
      jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 28, 28, 1)))
                     )["params"]))
  assert count == 347_146


def test_seed_cnn_shapes_follow_dataset_metadata():
  model = models.build_model("seed_cnn", num_classes=7)
  x = jnp.zeros((3, 32, 32, 3))
  variables = model.init(jax.random.key(0), x)
  assert model.apply(variables, x).shape == (3, 7)
  # Conv 30x30 -> pool 15x15x32 -> Dense 64.
  assert variables["params"]["Dense_0"]["kernel"].shape == (15 * 15 * 32, 64)


def test_models_are_pure_functions():
  model = models.build_model("seed_cnn", num_classes=10)
  x = jax.random.uniform(jax.random.key(1), (2, 28, 28, 1))
  variables = model.init(jax.random.key(0), x)
  assert jnp.array_equal(model.apply(variables, x), model.apply(variables, x))
  assert isinstance(model, nn.Module)


def test_unknown_model_lists_known_ones():
  with pytest.raises(ValueError, match=r"Unknown model 'resnet9000'.*seed_cnn"):
    models.build_model("resnet9000", num_classes=10)
