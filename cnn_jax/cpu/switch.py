"""Whether the CPU backend lowers now: its on/off state, read by the lowering rules and
`fusion.fuse`, set by `cnn_jax.cpu.enable()` and `disabled()`."""

import contextlib
import os

from cnn_jax.cpu import build

ENV = "CNN_JAX_ONEDNN"

_registered = False
_disabled = 0


def registered() -> bool:
  return _registered


def set_registered() -> None:
  global _registered
  _registered = True


def unavailable_reason() -> str:
  """Why the backend is off ('' when it is on)."""
  if os.environ.get(ENV, "1") == "0":
    return f"turned off by {ENV}=0"
  if not _registered:
    return "cnn_jax.cpu.enable() was not called"
  if _disabled:
    return "within cnn_jax.cpu.disabled()"
  return build.load()


def active(ctx=None) -> bool:
  """Whether the backend lowers now (`unavailable_reason()` is empty), and `ctx`'s
  program, if given, is not for `jax.export`."""
  if ctx is not None and ctx.module_context.lowering_parameters.for_export:
    return False
  return not unavailable_reason()


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
