"""Building blocks shared by the model files.

Some layers have a second formulation of the same function that runs faster on
XLA:CPU, whose native max-pool gradient (`select_and_scatter`) and convolution
gradients are slow there, the convolution gradients up to 50x inside a `lax.scan`
loop such as `train.train_steps`. The choice is made per backend by
`lax.platform_dependent` when the program is lowered, so model files and configs
are the same everywhere: CPU gets the fast formulation, GPU/TPU keep XLA's ops.

Convolutions with more than one input channel run on oneDNN's kernels where its
extension is available (models/onednn.py: float32, x86-64 Linux with a C++
compiler), else on the formulation below. With that extension, a one-channel 3x3
convolution followed by ReLU and a 2x2 max-pool (`ConvReluMaxPool`, the tutorial
CNN's first layer) is one kernel (models/conv_pool.py).

Each fast formulation is a `jax.custom_jvp` with a tangent rule linear in the
tangents (oneDNN's: primitives with their own transposes): forward mode
(`jax.jvp`, `jax.hessian`) runs the rule, and reverse mode transposes it, so the
rule is written for what its transpose costs. (A `jax.custom_vjp` would break
forward mode on every backend, since `lax.platform_dependent` traces every branch.)
"""

import functools
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.custom_derivatives import SymbolicZero

from cnn_jax.models import conv_pool, onednn


def max_pool_2x2_reference(x: jax.Array) -> jax.Array:
  """XLA's native 2x2/2 VALID max pooling (`reduce_window`)."""
  return nn.max_pool(x, (2, 2), strides=(2, 2), padding="VALID")


@jax.custom_jvp
def _max_pool_2x2_even(x: jax.Array) -> jax.Array:
  n, h, w, c = x.shape
  return jnp.max(x.reshape(n, h // 2, 2, w // 2, 2, c), axis=(2, 4))


def _argmax_reducer(a, b):
  """`lax.argmax`'s reduction, on (value, index) pairs: the larger value (NaN wins),
  and of equal values the first index."""
  (a_val, a_idx), (b_val, b_idx) = a, b
  pick_a = (a_val > b_val) | (a_val != a_val)
  pick_a_idx = pick_a | ((a_val == b_val) & (a_idx < b_idx))
  return jnp.where(pick_a, a_val, b_val), jnp.where(pick_a_idx, a_idx, b_idx)


@jax.custom_jvp
def _max_and_winner(windows: jax.Array) -> tuple[jax.Array, jax.Array]:
  """The maximum of each 2x2 window and the index (0-3, row-major) of its first maximum.

  `select_and_scatter` routes the gradient to that first maximum, so ties go where
  the reference's do. The winner of each window is one index (`lax.argmax`'s
  reduction), so exactly one element wins. Comparing each element with the pooled
  maximum (`==`) did not do that: jitted on XLA:CPU, where fusions may compute an
  element twice, not always alike, VGG-BN's gradients differed from the reference's
  by up to 70% of a layer's largest gradient (tests/test_layers.py). Maximum and
  index come from one variadic reduction, which XLA:CPU computes in one pass over the
  windows. With a maximum of its own beside the argmax (a YNNPACK reduction of the
  activations, written out for it) the tutorial CNN trained at 23,900 against 26,500
  img/s at batch 32 and 27,400 against 35,200 at batch 128 (docs/performance.md).
  """
  n, h2, _, w2, _, c = windows.shape
  flat = windows.transpose(0, 1, 3, 5, 2, 4).reshape(n, h2, w2, c, 4)
  index = lax.broadcasted_iota(jnp.int8, flat.shape, 4)
  init = (jnp.array(-jnp.inf, flat.dtype), jnp.array(0, jnp.int8))
  return lax.reduce((flat, index), init, _argmax_reducer, (4,))


def _winner_tangent(winner: jax.Array, t: jax.Array) -> jax.Array:
  """The tangent `t` [N, H/2, 2, W/2, 2, C] of each window's winning element.

  Linear in `t` with a constant mask: reverse mode transposes it into the
  mask-multiply gradient (a select of the broadcast output gradient), and forward mode
  takes the tangent of the element that won each window.
  """
  positions = jnp.arange(4, dtype=jnp.int8).reshape(1, 1, 2, 1, 2, 1)
  mask = winner[:, :, None, :, None, :] == positions
  return jnp.sum(jnp.where(mask, t, jnp.zeros((), t.dtype)), axis=(2, 4))


@_max_and_winner.defjvp
def _max_and_winner_jvp(primals, tangents):
  # Differentiating the pooling's tangent rule (second order: jax.hessian) comes here;
  # JAX has no derivative of a variadic reduction with a reducer of its own.
  (windows,), (t,) = primals, tangents
  y, winner = _max_and_winner(windows)
  return (y, winner), (_winner_tangent(winner, t),
                       np.zeros(winner.shape, jax.dtypes.float0))


@_max_pool_2x2_even.defjvp
def _max_pool_2x2_even_jvp(primals, tangents):
  (x,), (t,) = primals, tangents
  # Measured: without the barrier XLA:CPU recomputes the producer of `x` (a
  # convolution) four times per element of the gradient to find the winners.
  x = lax.optimization_barrier(x)
  n, h, w, c = x.shape
  windows = x.reshape(n, h // 2, 2, w // 2, 2, c)
  y, winner = _max_and_winner(windows)
  return y, _winner_tangent(winner, t.reshape(windows.shape))


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
  """The convolution as training computes it: with one input channel a broadcast
  multiply-add over the taps, which XLA fuses with the activation and pooling that
  follow and with their gradients."""
  kh, kw, cin, _ = w.shape
  if cin == 1:
    taps = w.reshape(kh * kw, -1)
    return sum(win * taps[k] for k, win in enumerate(_shifted_windows(x, kh, kw)))
  return _conv_valid_reference(x, w, precision)


@functools.partial(jax.custom_jvp, nondiff_argnums=(2,))
def _conv_shifted(x, w, precision):
  # Not differentiated (evaluation, prediction): XLA's own convolution. With one
  # input channel the multiply-add above, fused by YNNPACK with the whole forward
  # pass, held the runner's evaluation of the tutorial CNN to about 41,000 img/s;
  # this gives 63,000-66,000 (batch 256; docs/performance.md, "Evaluation").
  return _conv_valid_reference(x, w, precision)


# XLA:CPU computes both gradients of its native convolution as convolutions with
# unusual dimension orders; outside loops it rewrites them into plain ones, inside a
# while loop (lax.scan) it does not, and they run up to 50x slower (jax-ml/jax#12868).
# The tangent rule below is written so that its transpose, which reverse mode runs,
# holds no such convolution: the two linear maps are chosen for what they transpose to.


def _conv_input_tangent(tx, w, precision):
  """conv(tx, w), with the kernel laid out as HWOI.

  Transposing a convolution swaps the kernel's I and O labels, so this one's
  transpose (the input gradient) is a plain NHWC x HWIO convolution of the padded
  output gradient with the flipped kernel.
  """
  return lax.conv_general_dilated(tx, w.swapaxes(2, 3), (1, 1), "VALID",
                                  precision=precision,
                                  dimension_numbers=("NHWC", "HWOI", "NHWC"))


# The kernel tangent's convolution, with the batch and feature dimensions of its input
# swapped (the input transposed to [Cin, H, W, N]) and its output laid out [H, W, N, Cout].
_KERNEL_TANGENT_DIMS = lax.ConvDimensionNumbers(
    lhs_spec=(3, 0, 1, 2), rhs_spec=(3, 0, 1, 2), out_spec=(2, 3, 0, 1))


def _conv_kernel_tangent(x, tw, precision):
  """conv(x, tw), written for its transpose, the kernel gradient.

  With few patch features, one matmul of the stacked shifted windows of `x` against
  the taps of `tw`. Otherwise a convolution whose dimension numbers are chosen so that
  JAX's transpose of it (with respect to the kernel) is a plain NHWC x HWIO convolution:
  the input transposed to [Cin, H, W, N] (Cin as batch, N as features) against the
  output gradient as a [H, W, N, Cout] kernel, giving [Cin, KH, KW, Cout]. It
  contracts over N x H x W without copying the shifted windows; the one matmul per
  tap that it replaced was 1.1-2.1x slower inside `lax.scan` on the zoo's 3x3 layers
  (docs/performance.md). Forward mode computes this tangent itself, with unusual
  dimension numbers: right, but slow inside loops.
  """
  kh, kw, cin, cout = tw.shape
  if kh * kw * cin <= MAX_IM2COL_FEATURES:
    # One 2-D matmul over all taps: XLA swaps its transposed operands back into
    # windows x gradient, so with one input channel nothing is copied.
    windows = _shifted_windows(x, kh, kw)
    n, ho, wo, _ = windows[0].shape
    patches = jnp.stack(windows).reshape(kh * kw, n * ho * wo, cin)
    patches = patches.swapaxes(1, 2).reshape(kh * kw * cin, n * ho * wo)
    out = lax.dot_general(patches, tw.reshape(kh * kw * cin, cout),
                          (((0,), (0,)), ((), ())), precision=precision)
    return out.reshape(n, ho, wo, cout)

  out = lax.conv_general_dilated(x.transpose(3, 1, 2, 0), tw.transpose(2, 0, 1, 3),
                                 (1, 1), "VALID", precision=precision,
                                 dimension_numbers=_KERNEL_TANGENT_DIMS)
  return out.transpose(2, 0, 1, 3)


def _conv_shifted_jvp(precision, primals, tangents):
  (x, w), (tx, tw) = primals, tangents
  y = _conv_shifted_forward(x, w, precision)
  # Symbolic zeros: the input of the first layer (the data) has no tangent, and its
  # term must cost nothing, not a convolution of zeros.
  terms = []
  if type(tx) is not SymbolicZero:
    terms.append(_conv_input_tangent(tx, w, precision))
  if type(tw) is not SymbolicZero:
    terms.append(_conv_kernel_tangent(x, tw, precision))
  return y, sum(terms[1:], terms[0]) if terms else jnp.zeros_like(y)


_conv_shifted.defjvp(_conv_shifted_jvp, symbolic_zeros=True)


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


def conv_strided(lhs: jax.Array, rhs: jax.Array, strides: Sequence[int],
                 padding: Sequence[tuple[int, int]], precision: Any = None) -> jax.Array:
  """A strided NHWC x HWIO convolution as a stride-1 one, on CPU-friendly ops.

  A 1x1 kernel reads every stride-th pixel: the input is subsampled. Otherwise the
  input goes through space-to-depth (each sh x sw block of pixels becomes one pixel
  of sh * sw * Cin channels) and the kernel through the same rearrangement, zero-
  padded to whole blocks: a 3x3 stride-2 kernel becomes 2x2 over 4 * Cin channels
  (16/9 of the multiply-adds), computed by `conv_shifted`, whose gradients stay plain
  convolutions and matmuls inside loops. Equal to `lax.conv_general_dilated`.
  """
  sh, sw = strides
  kh, kw, cin, cout = rhs.shape
  lhs = jnp.pad(lhs, ((0, 0), *padding, (0, 0)))
  n, h, w, _ = lhs.shape
  ho, wo = (h - kh) // sh + 1, (w - kw) // sw + 1
  if kh == kw == 1:
    return conv_shifted(lhs[:, :ho * sh:sh, :wo * sw:sw], rhs, ((0, 0), (0, 0)), precision)
  bh, bw = -(-kh // sh), -(-kw // sw)  # Kernel size in blocks.
  hb, wb = ho - 1 + bh, wo - 1 + bw  # Input size in blocks that the output reads.
  lhs = jnp.pad(lhs[:, :hb * sh, :wb * sw],
                ((0, 0), (0, max(0, hb * sh - h)), (0, max(0, wb * sw - w)), (0, 0)))
  lhs = lhs.reshape(n, hb, sh, wb, sw, cin).transpose(0, 1, 3, 2, 4, 5)
  lhs = lhs.reshape(n, hb, wb, sh * sw * cin)
  rhs = jnp.pad(rhs, ((0, bh * sh - kh), (0, bw * sw - kw), (0, 0), (0, 0)))
  rhs = rhs.reshape(bh, sh, bw, sw, cin, cout).transpose(0, 2, 1, 3, 4, 5)
  rhs = rhs.reshape(bh, bw, sh * sw * cin, cout)
  return _conv_shifted(lhs, rhs, precision)


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None,
                         rhs_dilation=None, dimension_numbers=None,
                         feature_group_count=1, precision=None, **kwargs):
  """`lax.conv_general_dilated` that uses a faster formulation on CPU where it applies.

  Applies to 2-D NHWC/HWIO undilated ungrouped convolutions: oneDNN's
  (`onednn.conv`) for float32 with more than one input channel where it is
  available, else `conv_shifted` (strided ones through `conv_strided`), which keeps
  the one-channel layers' multiply-add that XLA fuses with what follows. Everything
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
      and ones(lhs_dilation) and ones(rhs_dilation)
      and dimension_numbers is not None
      and lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers) == nhwc)
  if not applies:
    return reference(lhs, rhs)
  strides = tuple(window_strides or (1, 1))
  pads = (lax.padtype_to_pads(lhs.shape[1:3], rhs.shape[:2], strides, padding)
          if isinstance(padding, str) else tuple(tuple(p) for p in padding))
  # On a GPU or TPU machine the CPU branch is traced but never run: nothing to build.
  if (lhs.shape[-1] > 1 and lhs.dtype == rhs.dtype == jnp.float32
      and jax.default_backend() == "cpu" and onednn.available()):
    fast = lambda lhs, rhs: onednn.conv(lhs, rhs, strides, pads)
  elif ones(strides):
    fast = lambda lhs, rhs: conv_shifted(lhs, rhs, pads, precision)
  else:
    fast = lambda lhs, rhs: conv_strided(lhs, rhs, strides, pads, precision)
  return lax.platform_dependent(lhs, rhs, cpu=fast, default=reference)


class Conv(nn.Conv):
  """`nn.Conv` (same parameters and names) whose convolution is `conv_general_dilated`."""

  conv_general_dilated: Any = conv_general_dilated


def conv_relu_max_pool(x: jax.Array, kernel: jax.Array, bias: jax.Array) -> jax.Array:
  """`max_pool_2x2(relu(conv(x, kernel, VALID) + bias))`, NHWC x HWIO.

  On the CPU, for float32, one input channel and a 3x3 kernel, where the extension is
  available, one kernel (`conv_pool.conv_relu_pool`); else these layers in turn.
  """
  def layered(x, kernel, bias):
    y = conv_general_dilated(x, kernel, (1, 1), "VALID",
                             dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return max_pool_2x2(nn.relu(y + bias))

  # On a GPU or TPU machine the CPU branch is traced but never run: nothing to build.
  if (jax.default_backend() == "cpu"
      and conv_pool.kernel_applies(x, kernel.shape, kernel, bias)):
    return lax.platform_dependent(x, kernel, bias, cpu=conv_pool.conv_relu_pool,
                                  default=layered)
  return layered(x, kernel, bias)


class ConvReluMaxPool(nn.Module):
  """`Conv(features, kernel_size, padding="VALID")`, ReLU and `max_pool_2x2` as one
  layer (`conv_relu_max_pool`). Its parameters are `nn.Conv`'s (kernel, bias; the same
  initialisers), so a model that names it `Conv_0` keeps a Conv_0's checkpoints."""

  features: int
  kernel_size: Sequence[int] = (3, 3)
  dtype: Any = None
  param_dtype: Any = jnp.float32
  kernel_init: Any = nn.linear.default_kernel_init
  bias_init: Any = nn.initializers.zeros_init()

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kernel = self.param("kernel", self.kernel_init,
                        (*self.kernel_size, x.shape[-1], self.features), self.param_dtype)
    bias = self.param("bias", self.bias_init, (self.features,), self.param_dtype)
    x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
    return conv_relu_max_pool(x, kernel, bias)
