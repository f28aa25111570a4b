"""The CPU backend: JAX's primitives lowered onto faster kernels, for any model.

Models are plain Flax (`nn.Conv`, `nn.max_pool`, ...) and know nothing of the machine.
`enable()` registers CPU lowering rules for the primitives convolutional networks spend
their time in, so every CPU program compiled afterwards, of the zoo's models or of a
model written anywhere, runs them on these kernels:

- `lax.conv_general_dilated_p`, in every form flax's layers and JAX's derivative and
  batching rules emit (strides, padding, input and kernel dilation, feature groups
  and depthwise, batch groups): oneDNN's forward, backward-data and backward-weights
  convolutions (`conv.py`);
- `lax.select_and_scatter_add_p`, the max-pool gradient: a kernel of ours (`pool.py`).

`fuse(f)` (`fusion.py`) goes one step further where one primitive at a time cannot: it
rewrites `f`'s traced program, before differentiation, so that a one-channel 3x3
convolution, bias, ReLU and 2x2 max-pool (the tutorial CNN's first layer) is one
kernel (`conv_pool.py`); `train.create_train_state` applies it to the model.

JAX's own rules make these primitives (`grad`, `jvp`, `hessian`, `vmap`, inside
`lax.scan` too), the backend only lowers them, so no model needs derivative code. A
case a fast path does not cover (a dtype, a layout) is lowered by XLA's own rule,
per primitive. GPU and TPU programs are untouched, and so are exported programs
(`jax.export`), which must run where this machine's kernels do not exist.

In your own script:

    import cnn_jax.cpu
    cnn_jax.cpu.enable()   # before the first jit compiles

The runner, `cnn_jax.testing` and the bench call it; `CNN_JAX_ONEDNN=0` in the
environment turns it off. The kernels are compiled on first use (`build.py`: a C++
compiler and the `onednn-devel-cpu-gomp` package); where that fails one warning says
why and XLA's own lowerings run.
"""

import contextlib
import os

from jax._src.interpreters import mlir as mlir_internal  # XLA's rules, for fallbacks.
from jax import lax
from jax.interpreters import mlir

from cnn_jax.cpu import build, conv, conv_pool, pool
from cnn_jax.cpu.fusion import fuse

ENV = "CNN_JAX_ONEDNN"

_registered = False
_disabled = 0


def _xla_rule(primitive):
  """XLA's own CPU lowering of `primitive` (its CPU-specific rule, else the generic)."""
  entry = (mlir_internal._platform_specific_lowerings["cpu"].get(primitive)  # pylint: disable=protected-access
           or mlir_internal._lowerings[primitive])  # pylint: disable=protected-access
  return entry.rule


def active(ctx=None) -> bool:
  """Whether the backend lowers now (`unavailable_reason()` is empty), and `ctx`'s
  program, if given, is not for `jax.export`."""
  if ctx is not None and ctx.module_context.lowering_parameters.for_export:
    return False
  return not unavailable_reason()


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
  global _registered
  if os.environ.get(ENV, "1") == "0":
    return False
  if not _registered:
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
    _registered = True
  return active()


def unavailable_reason() -> str:
  """Why the backend is off ('' when it is on)."""
  if os.environ.get(ENV, "1") == "0":
    return f"turned off by {ENV}=0"
  if not _registered:
    return "cnn_jax.cpu.enable() was not called"
  if _disabled:
    return "within cnn_jax.cpu.disabled()"
  return build.load()


@contextlib.contextmanager
def disabled():
  """Within it, programs lowered use XLA's own rules: for XLA's cost analysis, which
  counts no FLOPs inside a custom call. jit keeps executables it compiled before, so
  lower a function traced within it."""
  global _disabled
  _disabled += 1
  try:
    yield
  finally:
    _disabled -= 1
