"""The CPU lowering rules of the backend and their registration (`enable`)."""


import os

from jax._src.interpreters import mlir as mlir_internal  # XLA's rules, for fallbacks.
from jax import lax
from jax.interpreters import mlir

from cnn_jax.cpu import build, conv, conv_pool, pool, switch
from cnn_jax.cpu.switch import ENV, active


def _xla_rule(primitive):
  """XLA's own CPU lowering of `primitive` (its CPU-specific rule, else the generic)."""
  entry = (mlir_internal._platform_specific_lowerings["cpu"].get(primitive)  # pylint: disable=protected-access
           or mlir_internal._lowerings[primitive])  # pylint: disable=protected-access
  return entry.rule


def _lowering(primitive, choose, compute):
  """A CPU lowering rule for `primitive`: `compute` (traced by `mlir.lower_fun`) where
  `choose(ctx, **params)` returns a plan, else XLA's rule."""
  xla = _xla_rule(primitive)

  def rule(ctx, *args, **params):
    p = choose(ctx, **params) if active(ctx) else None
    if p is None:
      return xla(ctx, *args, **params)
    return mlir.lower_fun(lambda *a: compute(p, *a, **params),
                          multiple_results=primitive.multiple_results)(ctx, *args)

  return rule


def _conv_plan(ctx, **params):
  lhs, rhs = ctx.avals_in
  return conv.plan(lhs.shape, rhs.shape, ctx.avals_out[0].shape,
                   (lhs.dtype, rhs.dtype, ctx.avals_out[0].dtype), **params)


def _pool_plan(ctx, **params):
  source, operand = ctx.avals_in
  return True if pool.applies(source.dtype, operand.dtype, **params) else None


def enable() -> bool:
  """Registers the CPU lowerings (once; later calls do nothing). Programs compiled
  afterwards use them; a function jit already compiled keeps its executable.

  Returns whether the backend is on: False where `CNN_JAX_ONEDNN=0` or the kernels
  could not be built (then XLA's lowerings run, and a warning said why).
  """
  if os.environ.get(ENV, "1") == "0":
    return False
  if not switch.registered():
    mlir.register_lowering(
        lax.conv_general_dilated_p,
        _lowering(lax.conv_general_dilated_p, _conv_plan, conv.run), platform="cpu")
    scatter = lax.select_and_scatter_add_p
    mlir.register_lowering(
        scatter, _lowering(scatter, _pool_plan, lambda _, *a, **p: pool.run(*a, **p)),
        platform="cpu")
    for primitive, compute in conv_pool.CPU_RULES.items():
      mlir.register_lowering(
          primitive,
          _lowering(primitive, lambda ctx, **_: True,
                    lambda _, *a, compute=compute, **p: compute(*a, **p)),
          platform="cpu")
    switch.set_registered()
  return active()
