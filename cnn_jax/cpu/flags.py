"""Default XLA flags, set before JAX starts its backend.

XLA reads `XLA_FLAGS` once, when the first backend is created, so the defaults must be
in the environment before any JAX computation runs. A flag the user already set wins.
"""

import importlib.metadata
import os

# Measured on XLA:CPU (jax 0.10.2, AMD EPYC with AVX-512): 512-bit vectors speed up
# XLA's fused elementwise loops (normalisation, activations). The flag is ignored by
# GPU/TPU backends, and LLVM does not use wider vectors than the CPU has.
DEFAULT_FLAGS = ("--xla_cpu_prefer_vector_width=512",)

# Experimental flags, by the jaxlib versions they were measured on: XLA stops at
# start-up on a flag it does not know, so these are set on those versions only.
# - Convolutions that the CPU backend leaves to XLA (bfloat16, say) by XLA:CPU's own
#   (Eigen) kernels instead of YNNPACK's, which are slower there for our shapes: a 3x3 64->64 convolution's forward and both
#   gradients at batch 128, 28x28, took 315 ms with YNNPACK and 193 ms without, and
#   VGG-BN trains 15-18% faster (`./run.sh bench` gives the current figures).
#   Matmuls and reductions stay with YNNPACK.
VERSIONED_FLAGS = {
    "0.10.": ("--xla_cpu_experimental_ynn_fusion_type=-individual_convolution",),
}


def default_flags(jaxlib_version: str | None = None) -> tuple[str, ...]:
  """DEFAULT_FLAGS and the VERSIONED_FLAGS of the installed jaxlib."""
  if jaxlib_version is None:
    try:
      jaxlib_version = importlib.metadata.version("jaxlib")
    except importlib.metadata.PackageNotFoundError:
      jaxlib_version = ""
  extra = [f for prefix, flags in VERSIONED_FLAGS.items()
           if jaxlib_version.startswith(prefix) for f in flags]
  return (*DEFAULT_FLAGS, *extra)


def with_default_flags(xla_flags: str, defaults=None) -> str:
  """`xla_flags` plus each default (`default_flags()` unless given) whose flag name it
  does not set already."""
  defaults = default_flags() if defaults is None else defaults
  present = {f.split("=", 1)[0] for f in xla_flags.split()}
  extra = [f for f in defaults if f.split("=", 1)[0] not in present]
  return " ".join([*xla_flags.split(), *extra])


def set_default_flags(environ=None) -> None:
  """Adds the default flags to `XLA_FLAGS` in `environ` (default `os.environ`).

  Call it before the first JAX computation; later calls have no effect on a backend
  that is already running.
  """
  environ = os.environ if environ is None else environ
  environ["XLA_FLAGS"] = with_default_flags(environ.get("XLA_FLAGS", ""))
