"""JAX's convolutions on oneDNN: a CPU lowering of `lax.conv_general_dilated_p`.

Every 2-D convolution in a CPU program, whatever made it (a model's `nn.Conv`, JAX's
transposes of it in the gradient, `jax.jvp`, `jax.vmap`'s grouped form of
per-example gradients) is one primitive with a general form: strides, padding,
input (lhs) and kernel (rhs) dilation, feature and batch groups, and dimension
numbers. `plan` reads which of oneDNN's three convolutions computes it:

- forward (no input dilation, no batch groups): `y = conv(x, w)` with strides,
  kernel dilation, padding and groups, depthwise included;
- backward data (input dilation, unit window strides): what JAX's transpose with
  respect to the input emits for a strided convolution; its kernel is the forward
  kernel flipped with its input and output features swapped, undone here;
- backward weights (batch groups, or a "kernel" larger than the output, as JAX's
  transpose with respect to the kernel emits): the forward convolution's kernel
  gradient from its input and output gradient.

Operands are brought to oneDNN's layouts (NHWC activations, [KH, KW, I/G, G, O/G]
kernels) by transposes that are identities for flax's NHWC layers and their
gradients, and only kernels otherwise. Negative padding (an input the forward pass
never reads) becomes a slice, and a strided 1x1 convolution runs as a unit-stride one
on the pixels it reads: oneDNN 3.2's own strided 1x1 kernel gradient writes past its
scratchpad with fewer than 8 input channels on AVX2 (docs/performance.md).

What none of these covers (other dtypes, 1-D or 3-D convolutions, input dilation with
strides, feature and batch groups together) is lowered by XLA's own rule.
"""

from typing import NamedTuple

import jax
from jax import lax
import jax.numpy as jnp
import numpy as np


class Plan(NamedTuple):
  """Which oneDNN convolution computes a `conv_general_dilated`, and how."""
  kind: str  # "fwd", "bwd_data" or "bwd_weights".
  lhs_perm: tuple  # lhs -> canonical [N, H, W, C] (bwd_weights: [C, H, W, N]).
  rhs_perm: tuple  # rhs -> canonical [KH, KW, I, O] (bwd_weights: dy as [H, W, N, O]).
  out_perm: tuple  # canonical [N, H, W, C] -> the output's layout.


def plan(lhs_shape, rhs_shape, out_shape, dtypes, *, window_strides, padding,
         lhs_dilation, rhs_dilation, dimension_numbers, feature_group_count,
         batch_group_count, preferred_element_type=None, **unused) -> Plan | None:
  """The Plan for a `conv_general_dilated` of these shapes and parameters, or None
  where XLA's own lowering should run."""
  if len(lhs_shape) != 4 or any(d != jnp.float32 for d in dtypes):
    return None
  if preferred_element_type not in (None, jnp.float32):
    return None
  if feature_group_count > 1 and batch_group_count > 1:
    return None
  if any(lo + hi + s <= 0 for (lo, hi), s in zip(padding, lhs_shape[2:])):
    return None
  ls, rs, os_ = dimension_numbers
  lhs_perm = (ls[0], ls[2], ls[3], ls[1])
  rhs_perm = (rs[2], rs[3], rs[1], rs[0])
  out_perm = tuple(int(i) for i in np.argsort((os_[0], os_[2], os_[3], os_[1])))
  kernel = [rhs_shape[i] for i in rhs_perm[:2]]
  output = [out_shape[os_[2]], out_shape[os_[3]]]
  unit = lambda v: all(d == 1 for d in v)
  if batch_group_count > 1 or (
      feature_group_count == 1 and np.prod(kernel) > np.prod(output)):
    if not unit(lhs_dilation):
      return None
    return Plan("bwd_weights", lhs_perm, rhs_perm, out_perm)
  if not unit(lhs_dilation):
    if not unit(window_strides):
      return None
    return Plan("bwd_data", lhs_perm, rhs_perm, out_perm)
  return Plan("fwd", lhs_perm, rhs_perm, out_perm)


def _ffi(kind, a, b, shape, strides, dilation, pads, groups):
  (pt, pb), (pl, pr) = pads
  call = jax.ffi.ffi_call(f"cnn_jax_onednn_{kind}", jax.ShapeDtypeStruct(shape, a.dtype))
  i = np.int64
  return call(a, b, sh=i(strides[0]), sw=i(strides[1]), dh=i(dilation[0]),
              dw=i(dilation[1]), pt=i(pt), pl=i(pl), pb=i(pb), pr=i(pr), g=i(groups))


def _to_onednn_kernel(k, groups):
  """[KH, KW, I/G, O] -> oneDNN's hwio, or hwigo [KH, KW, I/G, G, O/G] with groups."""
  if groups == 1:
    return k
  kh, kw, ig, o = k.shape
  return k.reshape(kh, kw, ig, groups, o // groups)


def _crop(x, pads):
  """`x` [N, H, W, C] without the rows and columns that negative padding drops, and the
  padding left (each side >= 0)."""
  starts = [max(0, -lo) for lo, _ in pads]
  stops = [size - max(0, -hi) for (_, hi), size in zip(pads, x.shape[1:3])]
  x = x[:, starts[0]:stops[0], starts[1]:stops[1], :]
  return x, tuple((max(0, lo), max(0, hi)) for lo, hi in pads)


def _pixels_read(x, strides, pads, out_hw):
  """The pixels a strided 1x1 kernel reads: `x` padded, then every stride-th one."""
  x = jnp.pad(x, ((0, 0), *pads, (0, 0)))
  (sh, sw), (ho, wo) = strides, out_hw
  return x[:, :(ho - 1) * sh + 1:sh, :(wo - 1) * sw + 1:sw, :]


_NO_PADS = ((0, 0), (0, 0))


def forward(x, k, strides, pads, dilation, groups):
  """conv(x [N, H, W, C], k [KH, KW, C/G, O]) -> [N, Ho, Wo, O] by oneDNN."""
  x, pads = _crop(x, pads)
  kh, kw, _, o = k.shape
  out_hw = tuple((size + lo + hi - d * (kk - 1) - 1) // s + 1 for size, (lo, hi), d, kk, s
                 in zip(x.shape[1:3], pads, dilation, (kh, kw), strides))
  if kh == kw == 1 and tuple(strides) != (1, 1):
    x, strides, pads = _pixels_read(x, strides, pads, out_hw), (1, 1), _NO_PADS
  return _ffi("fwd", x, _to_onednn_kernel(k, groups), (x.shape[0], *out_hw, o), strides,
              dilation, pads, groups)


def backward_data(dy, k, lhs_dilation, pads, dilation, groups):
  """conv(dilate(dy [N, Hy, Wy, C], lhs_dilation), k [KH, KW, C/G, O]) with unit
  strides, as the input gradient of the strided convolution it transposes."""
  kh, kw, cg, o = k.shape
  og = o // groups
  # The forward kernel [KH, KW, O/G, G, C/G]: flipped, input and output swapped.
  wf = k.reshape(kh, kw, cg, groups, og).transpose(0, 1, 4, 3, 2)[::-1, ::-1]
  wf = wf.reshape(kh, kw, og, groups * cg) if groups == 1 else wf
  fwd_pads = [(d * (kk - 1) - lo, d * (kk - 1) - hi)
              for (lo, hi), d, kk in zip(pads, dilation, (kh, kw))]
  out_hw = [(size - 1) * s + 1 + lo + hi - d * (kk - 1) for size, s, (lo, hi), d, kk
            in zip(dy.shape[1:3], lhs_dilation, pads, dilation, (kh, kw))]
  # Rows of the input that the forward pass never reads get no gradient: computed
  # without them, then zero-padded.
  zeros = [(max(0, -lo), max(0, -hi)) for lo, hi in fwd_pads]
  fwd_pads = tuple((max(0, lo), max(0, hi)) for lo, hi in fwd_pads)
  inner = [size - lo - hi for size, (lo, hi) in zip(out_hw, zeros)]
  if kh == kw == 1:
    # The unit-stride gradient, each row and column put back where the stride read it.
    dx = _ffi("bwd_data", dy, wf, (dy.shape[0], *dy.shape[1:3], og * groups), (1, 1),
              dilation, _NO_PADS, groups)
    config = [(-lo, size + lo - (n - 1) * s - 1, s - 1) for (lo, _), size, n, s
              in zip(fwd_pads, inner, dy.shape[1:3], lhs_dilation)]
    dx = lax.pad(dx, jnp.zeros((), dx.dtype), ((0, 0, 0), *config, (0, 0, 0)))
  else:
    dx = _ffi("bwd_data", dy, wf, (dy.shape[0], *inner, og * groups), lhs_dilation,
              dilation, fwd_pads, groups)
  return jnp.pad(dx, ((0, 0), *zeros, (0, 0)))


def backward_weights(x, dy, kernel_hw, pads, strides, dilation, groups):
  """The kernel gradient [KH, KW, C/G, O] of the convolution of x [N, H, W, C] that
  gave dy [N, Hy, Wy, O], with these strides, padding (low sides), dilation, groups."""
  fwd_pads = []
  for size, (lo, _), n, s, d, kk in zip(x.shape[1:3], pads, dy.shape[1:3], strides,
                                        dilation, kernel_hw):
    fwd_pads.append((lo, (n - 1) * s + d * (kk - 1) + 1 - size - lo))  # Exact.
  x, fwd_pads = _crop(x, fwd_pads)
  if tuple(kernel_hw) == (1, 1) and tuple(strides) != (1, 1):
    x, strides, fwd_pads = (_pixels_read(x, strides, fwd_pads, dy.shape[1:3]), (1, 1),
                            _NO_PADS)
  o = dy.shape[3]
  cg = x.shape[3] // groups
  shape = (*kernel_hw, cg, o) if groups == 1 else (*kernel_hw, cg, groups, o // groups)
  dw = _ffi("bwd_weights", x, dy, shape, strides, dilation, fwd_pads, groups)
  return dw.reshape(*kernel_hw, cg, o)


def run(p: Plan, lhs, rhs, *, window_strides, padding, lhs_dilation, rhs_dilation,
        feature_group_count, batch_group_count, **unused):
  """Computes the `conv_general_dilated` that `p` (from `plan`) describes."""
  lhs, rhs = lhs.transpose(p.lhs_perm), rhs.transpose(p.rhs_perm)
  padding = tuple(tuple(int(v) for v in pair) for pair in padding)
  if p.kind == "fwd":
    y = forward(lhs, rhs, window_strides, padding, rhs_dilation, feature_group_count)
  elif p.kind == "bwd_data":
    y = backward_data(lhs, rhs, lhs_dilation, padding, rhs_dilation,
                      feature_group_count)
  else:
    # lhs is the forward input with batch and features swapped ([C, H, W, N]), rhs the
    # output gradient as [Hy, Wy, N, O]; the output [C/G, KH, KW, O] is the kernel
    # gradient with its input features first. The forward strides are this one's
    # kernel dilation, and its kernel dilation these strides.
    x = lhs.transpose(3, 1, 2, 0)
    dy = rhs.transpose(2, 0, 1, 3)
    out_hw = [(size + lo + hi - (d * (n - 1) + 1)) // s + 1 for size, (lo, hi), d, n, s
              in zip(x.shape[1:3], padding, rhs_dilation, dy.shape[1:3], window_strides)]
    dw = backward_weights(x, dy, out_hw, padding, rhs_dilation, window_strides,
                          batch_group_count)
    y = dw.transpose(2, 0, 1, 3)
  return y.transpose(p.out_perm)
