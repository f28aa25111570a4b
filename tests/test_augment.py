import functools
import inspect

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from cnn_jax import mesh as mesh_lib
from cnn_jax import train
from cnn_jax.data import augment as augment_lib
from cnn_jax.data import batching, in_memory, preprocess


def uint8_batch(n=16, shape=(28, 28, 1), seed=0):
  return np.random.default_rng(seed).integers(0, 256, (n, *shape), np.uint8)


def test_same_key_same_batch_and_different_key_differs():
  fn = jax.jit(augment_lib.make_augment(crop_padding=2, flip=True))
  x = uint8_batch()
  a, b = fn(jax.random.key(0), x), fn(jax.random.key(0), x)
  c = fn(jax.random.key(1), x)
  np.testing.assert_array_equal(a, b)
  assert not np.array_equal(a, c)


@pytest.mark.parametrize("dtype", [np.uint8, np.float32])
def test_shape_and_dtype_are_kept(dtype):
  x = uint8_batch(shape=(12, 10, 3)).astype(dtype)
  out = augment_lib.make_augment(crop_padding=3, flip=True)(jax.random.key(0), x)
  assert out.shape == x.shape and out.dtype == dtype


def test_no_crop_and_no_flip_is_identity():
  x = uint8_batch()
  assert augment_lib.make_augment(0, False) is None
  out = augment_lib.augment(jax.random.key(0), x, crop_padding=0, flip=False)
  np.testing.assert_array_equal(out, x)


def test_flip_mirrors_exactly_the_selected_images():
  key, x = jax.random.key(3), uint8_batch(n=64)
  mask = np.asarray(augment_lib.flip_mask(key, 64))
  assert 0 < mask.sum() < 64
  expected = np.where(mask[:, None, None, None], x[:, :, ::-1, :], x)
  np.testing.assert_array_equal(augment_lib.random_flip(key, x), expected)


def test_crop_shifts_content_by_the_drawn_offsets():
  key, x, pad = jax.random.key(5), uint8_batch(n=32, shape=(9, 7, 2)), 2
  offsets = np.asarray(augment_lib.crop_offsets(key, 32, pad))
  assert offsets.min() >= 0 and offsets.max() <= 2 * pad
  assert len({tuple(o) for o in offsets}) > 1
  padded = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
  expected = np.stack([p[r:r + 9, c:c + 7] for p, (r, c) in zip(padded, offsets)])
  out = np.asarray(jax.jit(augment_lib.random_crop, static_argnums=2)(key, x, pad))
  np.testing.assert_array_equal(out, expected)
  # Equivalently, offset (r, c) moves the content down-right by (pad - r, pad - c)
  # and fills the uncovered pixels with zeros.
  for image, crop, (r, c) in zip(x, out, offsets):
    dr, dc = pad - r, pad - c
    shifted = np.zeros_like(image)
    shifted[max(dr, 0):9 + min(dr, 0), max(dc, 0):7 + min(dc, 0)] = \
        image[max(-dr, 0):9 - max(dr, 0), max(-dc, 0):7 - max(dc, 0)]
    np.testing.assert_array_equal(crop, shifted)


def test_bad_crop_padding_says_what_to_use():
  for bad in (-1, 1.5, True):
    with pytest.raises(ValueError, match="crop_padding"):
      augment_lib.make_augment(crop_padding=bad)


def test_channel_stats_match_numpy_over_chunks():
  x = uint8_batch(n=5, shape=(3, 4, 2), seed=1)
  mean, std = preprocess.channel_stats(x, chunk=2)
  scaled = x.astype(np.float64) / 255
  np.testing.assert_allclose(mean, scaled.mean((0, 1, 2)), rtol=1e-6)
  np.testing.assert_allclose(std, scaled.std((0, 1, 2)), rtol=1e-5)
  assert mean.shape == std.shape == (2,) and mean.dtype == np.float32
  mean, std = preprocess.channel_stats(np.array([0, 255], np.uint8).reshape(2, 1, 1, 1))
  np.testing.assert_allclose((mean, std), ([0.5], [0.5]))


def test_normalised_training_split_has_zero_mean_unit_std():
  x = uint8_batch(n=8, shape=(5, 5, 3), seed=2)
  fn = preprocess.make_preprocess(*preprocess.channel_stats(x))
  out = np.asarray(jax.jit(fn)(x))
  assert out.dtype == np.float32
  np.testing.assert_allclose(out.mean((0, 1, 2)), 0, atol=1e-5)
  np.testing.assert_allclose(out.std((0, 1, 2)), 1, rtol=1e-4)
  assert preprocess.make_preprocess() is preprocess.scale_to_unit


def test_make_preprocess_rejects_bad_statistics():
  with pytest.raises(ValueError, match="both mean and std"):
    preprocess.make_preprocess(mean=[0.5])
  with pytest.raises(ValueError, match="no spread"):
    preprocess.make_preprocess([0.5], [0.0])
  with pytest.raises(ValueError, match="uint8"):
    preprocess.channel_stats(np.zeros((2, 3, 3, 1), np.float32))


def test_augment_and_dropout_keys_are_different_streams():
  state = train.TrainState(step=7, apply_fn=None, params={}, tx=optax.sgd(0.1),
                           opt_state=(), key=jax.random.key(0))
  keys = [jax.random.key_data(train.step_key(state, s))
          for s in (train.DROPOUT_STREAM, train.AUGMENT_STREAM)]
  assert not np.array_equal(*keys)


class Linear(nn.Module):
  """A model that compiles in a blink: these tests are about the data path."""

  @nn.compact
  def __call__(self, x, train: bool):
    del train
    return nn.Dense(10)(x.reshape((x.shape[0], -1)))


@pytest.fixture(scope="module")
def split_and_state(n=64, shape=(12, 12, 1)):
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (n, *shape), np.uint8)
  labels = rng.integers(0, 10, n).astype(np.int32)
  mesh = mesh_lib.make_mesh()
  state = jax.jit(functools.partial(train.create_train_state, Linear(), image_shape=shape,
                                    tx=optax.adam(1e-3)))(jax.random.key(0))
  return in_memory.put_split(images, labels, mesh), state, mesh


def test_train_steps_augment_each_step_with_its_own_key(split_and_state):
  split, state, mesh = split_and_state
  order = split.rows[batching.epoch_order(jax.random.key(1), 0, 64, 16)[:2]]
  aug = augment_lib.make_augment(crop_padding=2, flip=True)
  plain_steps, augmented_steps = (jax.jit(functools.partial(
      train.train_steps, preprocess=preprocess.scale_to_unit, augment=augment,
      batch_sharding=mesh_lib.batch_sharding(mesh))) for augment in (None, aug))
  plain, _ = plain_steps(state, split.arrays, order)
  augmented, sums = augmented_steps(state, split.arrays, order)
  again, _ = augmented_steps(state, split.arrays, order)
  kernel = lambda s: np.asarray(s.params["Dense_0"]["kernel"])
  assert not np.array_equal(kernel(plain), kernel(augmented))
  np.testing.assert_array_equal(kernel(augmented), kernel(again))

  # The same steps by hand: augment raw pixels with the step's key, then preprocess.
  @jax.jit
  def by_hand(state, images, labels):
    loss = 0.0
    for indices in order:
      image = aug(train.step_key(state, train.AUGMENT_STREAM), images[indices])
      state, metrics = train.train_step(
          state, {"image": preprocess.scale_to_unit(image), "label": labels[indices]})
      loss += metrics["loss"]
    return state, loss

  manual, manual_loss = by_hand(state, split.images, split.labels)
  np.testing.assert_allclose(kernel(manual), kernel(augmented), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(sums["loss"], manual_loss, rtol=1e-5)


def test_evaluate_is_never_augmented(split_and_state):
  assert "augment" not in inspect.signature(train.evaluate).parameters
  split, state, _ = split_and_state
  order, mask = batching.eval_order(64, 32)
  mean, std = preprocess.channel_stats(np.asarray(split.images))
  prep = preprocess.make_preprocess(mean, std)
  sums = jax.jit(functools.partial(train.evaluate, preprocess=prep))(
      state, split.arrays, split.rows[order], mask)
  direct = train.eval_step(state, {"image": prep(split.images), "label": split.labels,
                                   "mask": jnp.ones(64, bool)})
  for k in direct:
    np.testing.assert_allclose(sums[k], direct[k], rtol=1e-5)
