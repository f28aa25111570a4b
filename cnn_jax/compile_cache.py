"""JAX's persistent compilation cache, on by default: compiled programs kept on disk.

A run compiles about a dozen programs (initialisation, the training chunk and its
last shorter chunk, evaluation, the FLOP count): 3.5 s of a one-epoch tutorial run
on a 2-core CPU, a third of it `create_train_state`, whose random initialisers
XLA:CPU compiles slowly. With the cache, a run whose programs were compiled before loads
them instead. JAX keys each entry by the program, its shapes and shardings, the XLA
flags, the backend and the JAX version, so a cached program is the one a compilation
would give.

JAX's own variables win: with JAX_COMPILATION_CACHE_DIR in the environment this
module uses that directory (set it empty to turn the cache off), and
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


def default_dir(environ=None) -> str:
  """$XDG_CACHE_HOME (else ~/.cache) / cnn_jax/jax/<host_tag()>."""
  environ = os.environ if environ is None else environ
  base = environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return os.path.join(base, "cnn_jax", "jax", host_tag())


def enable(environ=None) -> str | None:
  """Turns the cache on (before the first compilation); the directory in use, or
  None where the environment turned it off."""
  environ = os.environ if environ is None else environ
  import jax  # pylint: disable=g-import-not-at-top
  path = environ[DIR_ENV] if DIR_ENV in environ else default_dir(environ)
  if not path:
    jax.config.update("jax_enable_compilation_cache", False)
    return None
  jax.config.update("jax_compilation_cache_dir", path)
  if "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS" not in environ:
    jax.config.update("jax_persistent_cache_min_compile_time_secs", MIN_COMPILE_SECS)
  return path
