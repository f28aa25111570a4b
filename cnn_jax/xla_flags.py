"""Default XLA flags, set before JAX starts its backend.

XLA reads `XLA_FLAGS` once, when the first backend is created, so the defaults must be
in the environment before any JAX computation runs. A flag the user already set wins.
"""

import os

# Measured on XLA:CPU (jax 0.10.2, AMD EPYC with AVX-512): 512-bit vectors speed up the
# tutorial's fused elementwise conv/ReLU/pool loops. The flag is ignored by GPU/TPU
# backends, and LLVM does not use wider vectors than the CPU has.
DEFAULT_FLAGS = ("--xla_cpu_prefer_vector_width=512",)


def with_default_flags(xla_flags: str, defaults=DEFAULT_FLAGS) -> str:
  """`xla_flags` plus each default whose flag name it does not set already."""
  present = {f.split("=", 1)[0] for f in xla_flags.split()}
  extra = [f for f in defaults if f.split("=", 1)[0] not in present]
  return " ".join([*xla_flags.split(), *extra])


def set_default_flags(environ=None) -> None:
  """Adds `DEFAULT_FLAGS` to `XLA_FLAGS` in `environ` (default `os.environ`).

  Call it before the first JAX computation; later calls have no effect on a backend
  that is already running.
  """
  environ = os.environ if environ is None else environ
  environ["XLA_FLAGS"] = with_default_flags(environ.get("XLA_FLAGS", ""))
