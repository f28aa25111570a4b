"""Building blocks shared by the model files.

Some layers have a second formulation of the same function that runs faster on
XLA:CPU, whose native max-pool gradient (`select_and_scatter`) and convolution
gradients are slow there, the convolution gradients up to 50x inside a `lax.scan`
loop such as `train.train_steps`. The choice is made per backend by
`lax.platform_dependent` when the program is lowered, so model files and configs
are the same everywhere: CPU gets the fast formulation, GPU/TPU keep XLA's ops.
"""

import functools
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax


def max_pool_2x2_reference(x: jax.Array) -> jax.Array:
  """XLA's native 2x2/2 VALID max pooling (`reduce_window`)."""
  return nn.max_pool(x, (2, 2), strides=(2, 2), padding="VALID")


@jax.custom_vjp
def _max_pool_2x2_even(x: jax.Array) -> jax.Array:
  n, h, w, c = x.shape
  return jnp.max(x.reshape(n, h // 2, 2, w // 2, 2, c), axis=(2, 4))


def _max_pool_2x2_even_fwd(x):
  y = _max_pool_2x2_even(x)
  return y, (x, y)


def _max_pool_2x2_even_bwd(residuals, g):
  x, y = residuals
  n, h, w, c = x.shape
  windows = x.reshape(n, h // 2, 2, w // 2, 2, c)
  # Like `select_and_scatter`, the gradient goes to the first maximum of each
  # window in row-major order, so ties are routed exactly as the reference does.
  taken = jnp.zeros(y.shape, bool)
  rows = []
  for i in range(2):
    cols = []
    for j in range(2):
      hit = (windows[:, :, i, :, j, :] == y) & ~taken
      taken = taken | hit
      cols.append(jnp.where(hit, g, jnp.zeros_like(g)))
    rows.append(jnp.stack(cols, axis=3))
  return (jnp.stack(rows, axis=2).reshape(x.shape),)


_max_pool_2x2_even.defvjp(_max_pool_2x2_even_fwd, _max_pool_2x2_even_bwd)


def max_pool_2x2_reshape(x: jax.Array) -> jax.Array:
  """2x2/2 VALID max pooling as a reshape and a max, with a mask-multiply gradient.

  The same function and gradient as `max_pool_2x2_reference`, faster on XLA:CPU.
  """
  h, w = x.shape[-3] // 2 * 2, x.shape[-2] // 2 * 2
  return _max_pool_2x2_even(x[..., :h, :w, :])


def max_pool_2x2(x: jax.Array) -> jax.Array:
  """2x2 max pooling with stride 2 and VALID padding (odd trailing rows are dropped).

  Args:
    x: [N, H, W, C] activations.

  Returns:
    [N, H // 2, W // 2, C]; on CPU computed by `max_pool_2x2_reshape`.
  """
  if x.ndim != 4:
    return max_pool_2x2_reference(x)
  return lax.platform_dependent(
      x, cpu=max_pool_2x2_reshape, default=max_pool_2x2_reference)


# Up to this many patch features (kh * kw * cin) the weight gradient stacks all
# shifted windows into one matmul; it costs kh * kw copies of the input.
MAX_IM2COL_FEATURES = 64


def _shifted_windows(x: jax.Array, kh: int, kw: int) -> list[jax.Array]:
  ho, wo = x.shape[1] - kh + 1, x.shape[2] - kw + 1
  return [x[:, i:i + ho, j:j + wo, :] for i in range(kh) for j in range(kw)]


def _conv_valid_reference(x, w, precision):
  return lax.conv_general_dilated(x, w, (1, 1), "VALID", precision=precision,
                                  dimension_numbers=("NHWC", "HWIO", "NHWC"))


def _conv_shifted_forward(x, w, precision):
  kh, kw, cin, _ = w.shape
  if cin == 1:  # A broadcast multiply-add that XLA fuses with what follows.
    taps = w.reshape(kh * kw, -1)
    return sum(win * taps[k] for k, win in enumerate(_shifted_windows(x, kh, kw)))
  return _conv_valid_reference(x, w, precision)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _conv_shifted(x, w, precision):
  return _conv_shifted_forward(x, w, precision)


def _conv_shifted_fwd(x, w, precision):
  return _conv_shifted_forward(x, w, precision), (x, w)


def _conv_shifted_bwd(precision, residuals, g):
  x, w = residuals
  kh, kw, cin, cout = w.shape
  # XLA:CPU computes both gradients of its native convolution as convolutions
  # with unusual dimension orders; outside loops it rewrites them into plain
  # ones, inside a while loop (lax.scan) it does not, and they run up to 50x
  # slower (jax-ml/jax#12868). Here both are formulated so that no such
  # convolution is left: the weight gradient as matmuls of the shifted windows
  # against the output gradient, the input gradient as a plain NHWC x HWIO
  # convolution of the zero-padded output gradient with the flipped kernel.
  windows = _shifted_windows(x, kh, kw)
  if kh * kw * cin <= MAX_IM2COL_FEATURES:  # One matmul over all taps at once.
    dw = lax.dot_general(jnp.stack(windows), g, (((1, 2, 3), (0, 1, 2)), ((), ())),
                         precision=precision)
  else:  # One matmul per tap: no kh * kw copies of the input held at once.
    dw = jnp.stack([lax.dot_general(win, g, (((0, 1, 2), (0, 1, 2)), ((), ())),
                                    precision=precision) for win in windows])
  # Unused for the first layer's input, and then removed by XLA.
  flipped = jnp.flip(w, (0, 1)).swapaxes(2, 3)
  padded = jnp.pad(g, ((0, 0), (kh - 1, kh - 1), (kw - 1, kw - 1), (0, 0)))
  return _conv_valid_reference(padded, flipped, precision), dw.reshape(kh, kw, cin, cout)


_conv_shifted.defvjp(_conv_shifted_fwd, _conv_shifted_bwd)


def conv_shifted(lhs: jax.Array, rhs: jax.Array, padding: Sequence[tuple[int, int]],
                 precision: Any = None) -> jax.Array:
  """A stride-1 NHWC x HWIO convolution as a sum over the kernel taps of shifted inputs.

  Args:
    lhs: [N, H, W, Cin] inputs.
    rhs: [KH, KW, Cin, Cout] kernel.
    padding: ((top, bottom), (left, right)) zero padding.
    precision: passed to the matmuls.

  Returns:
    [N, H', W', Cout], equal to `lax.conv_general_dilated`. With one input channel
    the forward pass is elementwise, so XLA fuses it with the bias, activation and
    pooling that follow; the weight gradient is a single matmul.
  """
  if any(tuple(p) != (0, 0) for p in padding):
    lhs = jnp.pad(lhs, ((0, 0), *padding, (0, 0)))
  return _conv_shifted(lhs, rhs, precision)


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None,
                         rhs_dilation=None, dimension_numbers=None,
                         feature_group_count=1, precision=None, **kwargs):
  """`lax.conv_general_dilated` that uses `conv_shifted` on CPU where it applies.

  Applies to 2-D NHWC/HWIO stride-1 undilated ungrouped convolutions; everything
  else, and every non-CPU backend, calls the lax op.
  """
  def reference(lhs, rhs):
    return lax.conv_general_dilated(
        lhs, rhs, window_strides, padding, lhs_dilation=lhs_dilation,
        rhs_dilation=rhs_dilation, dimension_numbers=dimension_numbers,
        feature_group_count=feature_group_count, precision=precision, **kwargs)

  ones = lambda v: v is None or all(d == 1 for d in v)
  nhwc = lax.conv_dimension_numbers(lhs.shape, rhs.shape, ("NHWC", "HWIO", "NHWC"))
  applies = (
      lhs.ndim == 4 and not kwargs and feature_group_count == 1
      and ones(window_strides) and ones(lhs_dilation) and ones(rhs_dilation)
      and dimension_numbers is not None
      and lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers) == nhwc)
  if not applies:
    return reference(lhs, rhs)
  pads = (lax.padtype_to_pads(lhs.shape[1:3], rhs.shape[:2], (1, 1), padding)
          if isinstance(padding, str) else tuple(tuple(p) for p in padding))
  fast = lambda lhs, rhs: conv_shifted(lhs, rhs, pads, precision)
  return lax.platform_dependent(lhs, rhs, cpu=fast, default=reference)


class Conv(nn.Conv):
  """`nn.Conv` (same parameters and names) whose convolution is `conv_general_dilated`."""

  conv_general_dilated: Any = conv_general_dilated
