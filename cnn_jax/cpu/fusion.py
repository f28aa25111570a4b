"""Fused kernels where a program has the layers they compute: a transformation of the
traced program, before differentiation, below the model.

A lowering rule sees one primitive at a time, so it cannot keep an activation out of
memory between layers. `fuse(f)` traces `f` (a model's `apply`, say) to a jaxpr,
replaces each run of primitives that a fused kernel computes with that kernel's
primitive, and evaluates the result; JAX's rules then differentiate and batch the
fused primitive as any other (its tangent and transposes are its own). Today one
pattern, the tutorial CNN's first layer as flax writes it:

    conv_general_dilated (NHWC x HWIO [3, 3, 1, C], VALID, unit strides, float32)
    -> add (a bias [C], reshaped to [1, 1, 1, C])
    -> relu (`jax.nn.relu`'s custom_jvp and jit calls of `max` with 0, or that `max`)
    -> reduce_window_max (2x2, stride 2, VALID)

becomes `conv_pool.conv_relu_pool` (`csrc/conv_relu_pool.cc`), each intermediate
used nowhere else. Where the backend is not active (`switch.active()`, a
non-CPU default backend) `fuse(f)` calls `f` itself.
"""

import jax
from jax import lax
from jax.extend import core as jex_core
import numpy as np

from cnn_jax.cpu import conv_pool, switch


def _is_relu(eqn) -> bool:
  """`max(x, 0)`, or a call (`jax.nn.relu`'s custom_jvp and jit) of nothing else."""
  if eqn.primitive is lax.max_p:
    return (isinstance(eqn.invars[1], jex_core.Literal)
            and np.ndim(eqn.invars[1].val) == 0 and float(eqn.invars[1].val) == 0.0)
  inner = eqn.params.get("call_jaxpr", eqn.params.get("jaxpr"))
  inner = getattr(inner, "jaxpr", inner)
  return (isinstance(inner, jex_core.Jaxpr) and len(inner.eqns) == 1
          and len(eqn.invars) == 1 and _is_relu(inner.eqns[0]))


def _is_first_layer_conv(eqn) -> bool:
  if eqn.primitive is not lax.conv_general_dilated_p:
    return False
  p = eqn.params
  x, w = (v.aval for v in eqn.invars)
  dims = p["dimension_numbers"]
  return (tuple(dims.lhs_spec) == (0, 3, 1, 2) and tuple(dims.rhs_spec) == (3, 2, 0, 1)
          and tuple(dims.out_spec) == (0, 3, 1, 2) and x.ndim == 4
          and conv_pool.kernel_applies(x, w.shape, w)
          and tuple(p["window_strides"]) == (1, 1)
          and all(tuple(pad) == (0, 0) for pad in p["padding"])
          and tuple(p["lhs_dilation"]) == tuple(p["rhs_dilation"]) == (1, 1)
          and p["feature_group_count"] == p["batch_group_count"] == 1
          and p["preferred_element_type"] in (None, np.float32))


def _is_pool_2x2(eqn) -> bool:
  p = eqn.params
  return (eqn.primitive is lax.reduce_window_max_p
          and tuple(p["window_dimensions"]) == tuple(p["window_strides"]) == (1, 2, 2, 1)
          and all(tuple(pad) == (0, 0) for pad in p["padding"])
          and tuple(p["base_dilation"]) == tuple(p["window_dilation"]) == (1, 1, 1, 1))


def rewrite(jaxpr):
  """`jaxpr` with each conv -> bias -> relu -> 2x2 max-pool run replaced by one
  `conv_pool.fwd_p` equation (the others in their places)."""
  uses, producer = {}, {}
  for eqn in jaxpr.eqns:
    for v in eqn.invars:
      if isinstance(v, jex_core.Var):
        uses.setdefault(v, []).append(eqn)
    for v in eqn.outvars:
      producer[v] = eqn
  outputs = {v for v in jaxpr.outvars if isinstance(v, jex_core.Var)}

  def only_use(v):
    """The one equation that reads `v`, or None."""
    readers = uses.get(v, [])
    return readers[0] if len(readers) == 1 and v not in outputs else None

  replaced, fused_at = set(), {}
  for conv in jaxpr.eqns:
    if not _is_first_layer_conv(conv):
      continue
    add = only_use(conv.outvars[0])
    if add is None or add.primitive is not lax.add_p:
      continue
    bias = [v for v in add.invars if v is not conv.outvars[0]]
    reshape = producer.get(bias[0]) if len(bias) == 1 else None
    channels = conv.outvars[0].aval.shape[-1]
    if (reshape is None or reshape.primitive is not lax.reshape_p
        or only_use(bias[0]) is not add
        or reshape.outvars[0].aval.shape != (1, 1, 1, channels)
        or reshape.invars[0].aval.shape != (channels,)):
      continue
    relu = only_use(add.outvars[0])
    if relu is None or not _is_relu(relu):
      continue
    pool = only_use(relu.outvars[0])
    if pool is None or not _is_pool_2x2(pool):
      continue
    win = jex_core.DropVar(jax.core.ShapedArray(pool.outvars[0].aval.shape, np.int8))
    fused_at[id(pool)] = jex_core.new_jaxpr_eqn(
        [conv.invars[0], conv.invars[1], reshape.invars[0]], [pool.outvars[0], win],
        conv_pool.fwd_p, {}, jex_core.no_effects, conv.source_info)
    replaced |= {id(conv), id(add), id(relu), id(pool), id(reshape)}
  if not fused_at:
    return jaxpr
  eqns = [fused_at.get(id(e), e) for e in jaxpr.eqns
          if id(e) not in replaced or id(e) in fused_at]
  return jaxpr.replace(eqns=eqns)


class Fused:
  """`fuse(fn)`: calls `fn` through `rewrite` where the CPU backend is active.
  Compares equal to another of the same `fn` (a TrainState's `apply_fn` is part of its
  tree structure)."""

  def __init__(self, fn):
    self.fn = fn

  def __eq__(self, other):
    return type(other) is Fused and other.fn == self.fn

  def __hash__(self):
    return hash((Fused, self.fn))

  def __call__(self, *args, **kwargs):
    if jax.default_backend() != "cpu" or not switch.active():
      return self.fn(*args, **kwargs)
    leaves, tree = jax.tree.flatten((args, kwargs))
    dynamic = [isinstance(l, (jax.Array, np.ndarray)) for l in leaves]

    def flat(*arrays):
      arrays = iter(arrays)
      full = [next(arrays) if d else l for l, d in zip(leaves, dynamic)]
      a, k = jax.tree.unflatten(tree, full)
      return self.fn(*a, **k)

    arrays = [l for l, d in zip(leaves, dynamic) if d]
    closed, shapes = jax.make_jaxpr(flat, return_shape=True)(*arrays)
    out = jax.core.eval_jaxpr(rewrite(closed.jaxpr), closed.consts, *arrays)
    return jax.tree.unflatten(jax.tree.structure(shapes), out)


def fuse(fn) -> Fused:
  """`fn`, computed with fused CPU kernels where its program has their layers."""
  return fn if isinstance(fn, Fused) else Fused(fn)
