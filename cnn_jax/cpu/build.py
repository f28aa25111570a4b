"""The CPU extension: its C++ sources (`csrc/`) compiled on first use, loaded, and its
handlers registered as XLA FFI targets.

The sources are oneDNN's convolutions (`csrc/onednn_conv.cc`), the max-pool
gradient (`csrc/max_pool_grad.cc`) and the fused one-channel convolution, ReLU and
pool (`csrc/conv_relu_pool.cc`). They are compiled with the C++ compiler against
the `onednn-devel-cpu-gomp` package (oneDNN 3.2 with GNU OpenMP, and its headers) with
`-O3 -march=native`, once per machine, into `~/.cache/cnn_jax/ext/`, under a name
that digests the sources, jaxlib's version, the environment and the CPU.
"""

import ctypes
import functools
import hashlib
import importlib.metadata
import logging
import os
import pathlib
import shutil
import subprocess
import sys
import sysconfig
import tempfile

import jax

from cnn_jax import compile_cache

_CSRC = pathlib.Path(__file__).resolve().parent / "csrc"
SOURCES = (_CSRC / "onednn_conv.cc", _CSRC / "max_pool_grad.cc",
           _CSRC / "conv_relu_pool.cc")
# FFI target names (for XLA:CPU) of the extension's handlers.
TARGETS = {"cnn_jax_onednn_fwd": "OnednnConvForward",
           "cnn_jax_onednn_bwd_data": "OnednnConvBackwardData",
           "cnn_jax_onednn_bwd_weights": "OnednnConvBackwardWeights",
           "cnn_jax_max_pool_grad": "CpuMaxPoolGrad",
           "cnn_jax_conv_relu_pool_fwd": "ConvReluPoolForward",
           "cnn_jax_conv_relu_pool_kernel_grad": "ConvReluPoolKernelGrad",
           "cnn_jax_conv_relu_pool_bias_grad": "ConvReluPoolBiasGrad"}


def _prefix_dirs() -> tuple[pathlib.Path, pathlib.Path]:
  """Where pip put oneDNN's headers and library: the environment's include/ and lib/."""
  data = pathlib.Path(sysconfig.get_paths()["data"])
  return data / "include", data / "lib"


def _library_path() -> pathlib.Path:
  """The compiled extension's path, named for everything it is built from."""
  include, lib = _prefix_dirs()
  key = hashlib.sha256()
  for source in SOURCES:
    key.update(source.read_bytes())
  # host_tag(): the CPU's model and flags, since it is compiled with -march=native (a
  # cache shared by machines of other kinds keeps one build for each).
  for part in (importlib.metadata.version("jaxlib"), str(include), str(lib),
               sys.executable, compile_cache.host_tag()):
    key.update(part.encode())
  name = f"cpu_kernels-{key.hexdigest()[:16]}.so"
  return pathlib.Path(compile_cache.cache_root()) / "ext" / name


def build() -> pathlib.Path:
  """Compiles the extension unless its library exists; returns its path.

  Raises RuntimeError naming what is missing (the compiler, oneDNN's headers) or the
  compiler's output.
  """
  path = _library_path()
  if path.exists():
    return path
  include, lib = _prefix_dirs()
  compiler = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")
  if compiler is None or shutil.which(compiler) is None:
    raise RuntimeError(f"no C++ compiler ({compiler or 'g++, c++'}; set $CXX) to build "
                       "the CPU extension")
  if not (include / "oneapi" / "dnnl" / "dnnl.hpp").exists():
    raise RuntimeError(f"oneDNN's headers are not in {include}: pip install "
                       "onednn-devel-cpu-gomp (pyproject.toml lists it)")
  path.parent.mkdir(parents=True, exist_ok=True)
  # Written beside its final name and renamed: parallel builds never see half a file.
  fd, tmp = tempfile.mkstemp(suffix=".so", dir=path.parent)
  os.close(fd)
  command = [compiler, "-O3", "-march=native", "-fopenmp", "-std=c++17", "-shared",
             "-fPIC", "-w", *map(str, SOURCES), "-o", tmp, f"-I{jax.ffi.include_dir()}",
             f"-I{include}", f"-L{lib}", "-ldnnl", f"-Wl,-rpath,{lib}"]
  done = subprocess.run(command, capture_output=True, text=True)
  if done.returncode != 0:
    os.unlink(tmp)
    raise RuntimeError(f"building the CPU extension failed:\n{' '.join(command)}\n"
                       f"{done.stderr[-4000:]}")
  os.replace(tmp, path)
  return path


@functools.cache
def load() -> str:
  """Builds, loads and registers the extension: '' once done, else why not."""
  try:
    library = ctypes.cdll.LoadLibrary(str(build()))
  except (RuntimeError, OSError) as e:
    # Said once, when a program first needs it: such a run is slower, not wrong.
    logging.warning("CPU backend off, XLA's own kernels run: %s", e)
    return str(e)
  for name, symbol in TARGETS.items():
    jax.ffi.register_ffi_target(name, jax.ffi.pycapsule(getattr(library, symbol)),
                                platform="cpu")
  return ""
