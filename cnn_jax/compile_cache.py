"""JAX's persistent compilation cache, on by default: compiled programs kept on disk.

A run compiles about a dozen programs (initialisation, the training chunk and its
last shorter chunk, evaluation, the FLOP count): 3.5 s of a one-epoch tutorial run
on a 2-core CPU, a third of it `create_train_state`, whose random initialisers
XLA:CPU compiles slowly (less so since train.py draws them flat: 2.5 -> 1.5 s for the
tutorial CNN on a 2-core AVX2 CPU). With the cache, a run whose programs were
compiled before loads them instead. JAX keys each entry by the program, its shapes
and shardings, the XLA flags, the backend and the JAX version, so a cached program
is the one a compilation would give.

The cache is set through JAX's own environment variables, and a value already there
wins: JAX_COMPILATION_CACHE_DIR names the directory (empty turns the cache off), and
JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS replaces the default below. The cache has
no size limit (JAX's limit needs the `filelock` package); entries are tens of KB to
a few MB, and deleting the directory empties it.

XLA:CPU compiles for the features of the CPU it runs on, which JAX's key names only
as "cpu", so the default directory has one folder per kind of CPU: a home directory
shared by machines of different CPUs never hands one a program built for another.
"""

import hashlib
import os
import platform

DIR_ENV = "JAX_COMPILATION_CACHE_DIR"
MIN_SECS_ENV = "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"
# JAX's default caches programs that took a second or more to compile: ours mostly
# take 0.01-0.7 s each, so every program is kept.
MIN_COMPILE_SECS = 0.0


def host_tag(cpuinfo: str = "/proc/cpuinfo") -> str:
  """The machine's architecture and a digest of its CPU model and feature flags."""
  try:
    with open(cpuinfo) as f:
      lines = [l for l in f.read().splitlines()
               if l.startswith(("model name", "flags", "Features", "CPU part"))]
    described = "\n".join(dict.fromkeys(lines))  # Once each, not once per core.
  except OSError:
    described = platform.processor()
  return f"{platform.machine()}-{hashlib.sha256(described.encode()).hexdigest()[:12]}"


def cache_root(environ=None) -> str:
  """$XDG_CACHE_HOME (else ~/.cache) / cnn_jax: the project's caches on this machine."""
  environ = os.environ if environ is None else environ
  base = environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return os.path.join(base, "cnn_jax")


def default_dir(environ=None) -> str:
  """cache_root() / jax/<host_tag()>."""
  return os.path.join(cache_root(environ), "jax", host_tag())


def set_default_env(environ=None) -> str | None:
  """Sets JAX's cache variables in `environ` (default `os.environ`) where unset, as
  `cpu.flags.set_default_flags` does XLA's: before JAX is imported, which reads them
  then (child processes inherit them). The directory in use, or None where the
  environment turned the cache off."""
  environ = os.environ if environ is None else environ
  path = environ.setdefault(DIR_ENV, default_dir(environ))
  if not path:
    return None
  environ.setdefault(MIN_SECS_ENV, str(MIN_COMPILE_SECS))
  return path


# JAX's events for the three stages of making a program: tracing to a jaxpr, lowering
# to MLIR, and XLA's compilation (or loading it from this cache).
_COMPILE_EVENTS = frozenset((
    "/jax/core/compile/jaxpr_trace_duration",
    "/jax/core/compile/jaxpr_to_mlir_module_duration",
    "/jax/core/compile/backend_compile_duration",
))
_compile_secs: list[float] = []  # One running total, once the listener is in.


def compile_seconds() -> float:
  """Seconds this process has spent making JAX programs (tracing, lowering, compiling
  or loading from the cache) since the first call: the runner splits each epoch's time
  into compilation and the rest with it. Reads JAX's own monitoring events."""
  if not _compile_secs:
    import jax  # pylint: disable=g-import-not-at-top  (this module loads before JAX)
    _compile_secs.append(0.0)

    def listen(event: str, duration_secs: float, **unused_metadata) -> None:
      if event in _COMPILE_EVENTS:
        _compile_secs[0] += duration_secs
    jax.monitoring.register_event_duration_secs_listener(listen)
  return _compile_secs[0]
