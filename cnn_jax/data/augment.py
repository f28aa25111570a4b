"""Training-time augmentation: pure functions of (key, batch) that run on device.

`train.train_steps` applies them to the raw uint8 batch, before `preprocess`, so the
zero padding of a crop is a black pixel whatever the normalisation (the usual
pad -> crop -> flip -> normalise pipeline). Every function keeps shape and dtype, so
float batches work as well. Evaluation never augments.
"""

import functools
from typing import Callable

import jax
import jax.numpy as jnp

from cnn_jax.errors import ConfigError

Augment = Callable[[jax.Array, jax.Array], jax.Array]

# Independent streams under an augmentation key: turning flips on or off leaves the
# crop offsets of a run unchanged.
_CROP_STREAM, _FLIP_STREAM = 0, 1


def crop_offsets(key: jax.Array, num_images: int, padding: int) -> jax.Array:
  """Per-image (row, column) offsets into the padded image, int32 [N, 2] in [0, 2P]."""
  return jax.random.randint(key, (num_images, 2), 0, 2 * padding + 1, dtype=jnp.int32)


def random_crop(key: jax.Array, images: jax.Array, padding: int) -> jax.Array:
  """Pads `padding` zero pixels on each side of [N, H, W, C] images and crops each
  back to H x W at its own random offset (`crop_offsets`)."""
  if padding == 0:
    return images
  _, height, width, channels = images.shape
  padded = jnp.pad(images, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
  offsets = crop_offsets(key, images.shape[0], padding)

  def crop(image, offset):
    return jax.lax.dynamic_slice(image, (offset[0], offset[1], 0),
                                 (height, width, channels))

  return jax.vmap(crop)(padded, offsets)


def flip_mask(key: jax.Array, num_images: int) -> jax.Array:
  """Which images to flip: bool [N], each True with probability 0.5."""
  return jax.random.bernoulli(key, 0.5, (num_images,))


def random_flip(key: jax.Array, images: jax.Array) -> jax.Array:
  """Mirrors left-right the [N, H, W, C] images selected by `flip_mask`."""
  mask = flip_mask(key, images.shape[0])
  return jnp.where(mask[:, None, None, None], images[:, :, ::-1, :], images)


def augment(key: jax.Array, images: jax.Array, *, crop_padding: int,
            flip: bool) -> jax.Array:
  """Random crop with `crop_padding` (0: none), then a random flip if `flip`.

  A pure function of (key, images): the same key gives the same batch.
  """
  images = random_crop(jax.random.fold_in(key, _CROP_STREAM), images, crop_padding)
  if flip:
    images = random_flip(jax.random.fold_in(key, _FLIP_STREAM), images)
  return images


def make_augment(crop_padding: int = 0, flip: bool = False) -> Augment | None:
  """The augmentation a config asks for, as `fn(key, images)`; None when it asks none.

  Args:
    crop_padding: pixels of zero padding on each side before a random crop back to
      the input size; 0 turns cropping off.
    flip: whether to mirror each image left-right with probability 0.5 (leave off for
      digits, whose mirror images are not digits).
  """
  valid = isinstance(crop_padding, int) and not isinstance(crop_padding, bool)
  if not valid or crop_padding < 0:
    raise ConfigError(f"crop_padding={crop_padding!r} must be an integer >= 0 "
                     "(0 turns random cropping off), e.g. --config.crop_padding=2.")
  if crop_padding == 0 and not flip:
    return None
  return functools.partial(augment, crop_padding=crop_padding, flip=bool(flip))
