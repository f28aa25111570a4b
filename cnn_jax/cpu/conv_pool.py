"""A one-channel 3x3 VALID convolution, bias, ReLU and 2x2/2 max-pool as one CPU kernel.

The tutorial CNN's first layer, as `fusion.py` finds it in a program. As separate XLA
ops its [N, 26, 26, 32] activation is written and read by the convolution, ReLU and
pool and again by their gradients, which at batch 128 (11 MB) took most of a training
step on a 2-core machine; the kernel (`csrc/conv_relu_pool.cc`) keeps each image's
activation in registers and writes only the pooled output and, per output, its
winner: which of the window's four positions (row-major) holds the first maximum, or
-1 where the output is zero (docs/performance.md).

`conv_relu_pool(x, w, b)` is `max_pool_2x2(relu(conv(x, w) + b))`. Its tangent is, for
fixed winners, `select(conv(tx, w) + conv(x, tw) + tb)`: the winners' entries. The
winners' convolution `sel(x, w, win)` is bilinear in (x, w); it and its two transposes
(`kernel_grad`, on the CPU kernel, and `input_grad`) are primitives that transpose
into each other, and so are the bias's `bias_sel` and `bias_grad` (on the CPU kernel),
so reverse mode, `jax.jvp` and `jax.hessian` all work. Each primitive lowers to XLA's
ops (`_reference_*`); `CPU_RULES` are the CPU lowerings onto the kernel, which
`cnn_jax.cpu.enable()` registers. Other dtypes and `jax.vmap` run XLA's ops.
"""

import functools

import jax
from jax import lax
from jax._src import dispatch  # apply_primitive, as JAX's own primitives use.
from jax.extend import core as jex_core
from jax.interpreters import ad, batching, mlir
import jax.numpy as jnp

_DIMS = ("NHWC", "HWIO", "NHWC")


def _conv(x, w):
  return lax.conv_general_dilated(x, w, (1, 1), "VALID", dimension_numbers=_DIMS)


def _windows(z, ho, wo):
  """The 2x2 windows' four positions (row-major) of `z`, each [N, ho, wo, C]."""
  return [z[:, py:py + 2 * ho:2, px:px + 2 * wo:2, :] for py in (0, 1) for px in (0, 1)]


def _select(z, win):
  """Each output's winner's entry of `z` (the conv's output), zero where win is -1."""
  zero = jnp.zeros((), z.dtype)
  return sum(jnp.where(win == p, v, zero)
             for p, v in enumerate(_windows(z, win.shape[1], win.shape[2])))


def _reference_fwd(x, w, b):
  z = _conv(x, w) + b
  ho, wo = z.shape[1] // 2, z.shape[2] // 2
  values = _windows(z, ho, wo)
  best, idx = values[0], jnp.zeros(values[0].shape, jnp.int8)
  for p, v in enumerate(values[1:], 1):
    more = v > best
    best, idx = jnp.where(more, v, best), jnp.where(more, jnp.int8(p), idx)
  on = best > 0
  return [jnp.where(on, best, jnp.zeros((), best.dtype)),
          jnp.where(on, idx, jnp.int8(-1))]


def _reference_sel(x, w, win):
  return _select(_conv(x, w), win)


def _reference_kernel_grad(x, ct, win, *, shape):
  return jax.linear_transpose(lambda w: _reference_sel(x, w, win),
                              jax.ShapeDtypeStruct(shape, ct.dtype))(ct)[0]


def _reference_input_grad(ct, w, win, *, shape):
  return jax.linear_transpose(lambda x: _reference_sel(x, w, win),
                              jax.ShapeDtypeStruct(shape, ct.dtype))(ct)[0]


def _reference_bias_sel(tb, win):
  return jnp.where(win >= 0, tb, jnp.zeros((), tb.dtype))


def _reference_bias_grad(ct, win):
  return jnp.sum(_reference_bias_sel(ct, win), axis=(0, 1, 2))


def kernel_applies(x, kernel_shape, *arrays) -> bool:
  """Whether the CPU kernel computes this: x [N, H, W, 1], a [3, 3, 1, C] kernel, x and
  `arrays` float32."""
  return (x.ndim == 4 and x.shape[-1] == 1 and tuple(kernel_shape[:3]) == (3, 3, 1)
          and all(a.dtype == jnp.float32 for a in (x, *arrays)))


def _cpu_fwd(x, w, b):
  if not kernel_applies(x, w.shape, w, b):
    return _reference_fwd(x, w, b)
  n, h, wd, _ = x.shape
  shape = (n, (h - 2) // 2, (wd - 2) // 2, w.shape[3])
  call = jax.ffi.ffi_call("cnn_jax_conv_relu_pool_fwd",
                          (jax.ShapeDtypeStruct(shape, x.dtype),
                           jax.ShapeDtypeStruct(shape, jnp.int8)))
  return list(call(x, w, b))


def _cpu_kernel_grad(x, ct, win, *, shape):
  if not kernel_applies(x, shape, ct):
    return _reference_kernel_grad(x, ct, win, shape=shape)
  call = jax.ffi.ffi_call("cnn_jax_conv_relu_pool_kernel_grad",
                          jax.ShapeDtypeStruct(shape, ct.dtype))
  return call(x, win, ct)


def _cpu_bias_grad(ct, win):
  if ct.dtype != jnp.float32:
    return _reference_bias_grad(ct, win)
  call = jax.ffi.ffi_call("cnn_jax_conv_relu_pool_bias_grad",
                          jax.ShapeDtypeStruct(ct.shape[3:], ct.dtype))
  return call(ct, win)


def _abstract(reference):
  """`reference`'s output avals, for `def_abstract_eval`."""
  def rule(*avals, **params):
    out = jax.eval_shape(functools.partial(reference, **params),
                         *(jax.ShapeDtypeStruct(a.shape, a.dtype) for a in avals))
    as_aval = lambda s: jax.core.ShapedArray(s.shape, s.dtype)
    return [as_aval(s) for s in out] if isinstance(out, list) else as_aval(out)
  return rule


# Primitive -> its computation on the CPU kernel (falling back to XLA's ops where
# `kernel_applies` does not), lowered where the CPU backend is active.
CPU_RULES = {}


def _primitive(name, reference, cpu=None, multiple_results=False):
  p = jex_core.Primitive(f"conv_relu_pool_{name}")
  p.multiple_results = multiple_results
  p.def_impl(functools.partial(dispatch.apply_primitive, p))  # Eager: compiled alone.
  p.def_abstract_eval(_abstract(reference))
  mlir.register_lowering(p, mlir.lower_fun(reference, multiple_results=multiple_results))
  if cpu is not None:
    CPU_RULES[p] = cpu

  def batch(args, dims, **params):
    # vmap (per-example gradients, say): XLA's ops batch themselves.
    in_axes = [d if isinstance(d, int) else None for d in dims]
    out = jax.vmap(functools.partial(reference, **params), in_axes=in_axes)(*args)
    return out, ([0] * len(out) if multiple_results else 0)

  batching.primitive_batchers[p] = batch
  return p


fwd_p = _primitive("fwd", _reference_fwd, _cpu_fwd, multiple_results=True)
sel_p = _primitive("sel", _reference_sel)
kernel_grad_p = _primitive("kernel_grad", _reference_kernel_grad, _cpu_kernel_grad)
input_grad_p = _primitive("input_grad", _reference_input_grad)
bias_sel_p = _primitive("bias_sel", _reference_bias_sel)
bias_grad_p = _primitive("bias_grad", _reference_bias_grad, _cpu_bias_grad)


def _sel(x, w, win):
  return sel_p.bind(x, w, win)


def _kernel_grad(x, ct, win, shape):
  return kernel_grad_p.bind(x, ct, win, shape=tuple(shape))


def _input_grad(ct, w, win, shape):
  return input_grad_p.bind(ct, w, win, shape=tuple(shape))


def _bilinear(p, lhs_transpose, rhs_transpose):
  """`p(a, b, win)`, bilinear in (a, b) for fixed winners: its tangent and transposes."""
  ad.defjvp(p, lambda t, a, b, win, **params: p.bind(t, b, win, **params),
            lambda t, a, b, win, **params: p.bind(a, t, win, **params), None)

  def transpose(ct, a, b, win, **params):
    if ad.is_undefined_primal(a):
      out = (ad.Zero(a.aval.to_ct_aval()) if type(ct) is ad.Zero
             else lhs_transpose(ct, b, win, a.aval.shape))
      return [out, None, None]
    out = (ad.Zero(b.aval.to_ct_aval()) if type(ct) is ad.Zero
           else rhs_transpose(ct, a, win, b.aval.shape))
    return [None, out, None]

  ad.primitive_transposes[p] = transpose


# <sel(x, w), c> = <x, input_grad(c, w)> = <w, kernel_grad(x, c)>.
_bilinear(sel_p, lambda c, w, win, shape: _input_grad(c, w, win, shape),
          lambda c, x, win, shape: _kernel_grad(x, c, win, shape))
_bilinear(kernel_grad_p, lambda wbar, c, win, shape: _input_grad(c, wbar, win, shape),
          lambda wbar, x, win, shape: _sel(x, wbar, win))
_bilinear(input_grad_p, lambda xbar, w, win, shape: _sel(xbar, w, win),
          lambda xbar, c, win, shape: _kernel_grad(xbar, c, win, shape))


def _linear(p, transpose_rule):
  """`p(a, win)`, linear in `a` for fixed winners: its tangent and transpose."""
  ad.defjvp(p, lambda t, a, win: p.bind(t, win), None)

  def transpose(ct, a, win):
    if type(ct) is ad.Zero:
      return [ad.Zero(a.aval.to_ct_aval()), None]
    return [transpose_rule(ct, win), None]

  ad.primitive_transposes[p] = transpose


# <bias_sel(tb), c> = <tb, bias_grad(c)>.
_linear(bias_sel_p, bias_grad_p.bind)
_linear(bias_grad_p, bias_sel_p.bind)


def _fwd_jvp(primals, tangents):
  x, w, b = primals
  tx, tw, tb = tangents
  y, win = fwd_p.bind(x, w, b)
  terms = []
  if type(tx) is not ad.Zero:
    terms.append(_sel(tx, w, win))
  if type(tw) is not ad.Zero:
    terms.append(_sel(x, tw, win))
  if type(tb) is not ad.Zero:
    terms.append(bias_sel_p.bind(tb, win))
  ty = sum(terms) if terms else ad.Zero(y.aval.to_tangent_aval())
  return [y, win], [ty, ad.Zero(win.aval.to_tangent_aval())]


ad.primitive_jvps[fwd_p] = _fwd_jvp


def conv_relu_pool(x: jax.Array, w: jax.Array, b: jax.Array) -> jax.Array:
  """max_pool_2x2(relu(conv(x, w, VALID) + b)) for x [N, H, W, 1], w [3, 3, 1, C], b [C]:
  [N, (H - 2) // 2, (W - 2) // 2, C]."""
  return fwd_p.bind(x, w, b)[0]
