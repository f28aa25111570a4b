"""oneDNN's convolutions on XLA:CPU, as JAX primitives with their own derivatives.

XLA:CPU runs convolutions with Eigen's kernels, at 110-145 GFLOP/s for this
project's 3x3 layers on a 2-core AVX-512 machine, where oneDNN (the library behind
TensorFlow's and PyTorch's CPU convolutions) runs the same layers, forward and both
gradients, at 160-210 (docs/performance.md). `conv` computes a 2-D NHWC x HWIO
float32 convolution, and its gradients, by oneDNN through XLA's foreign function
interface (`cnn_jax/csrc/onednn_conv.cc`, compiled on first use with the C++
compiler against the `onednn-devel-cpu-gomp` package).

Three primitives, each bilinear: the convolution `y = fwd(x, w)`, its input gradient
`dx = bwd_data(dy, w)` and its kernel gradient `dw = bwd_weights(x, dy)`. Each one's
transposes are the other two (`jax.interpreters.ad.defbilinear`), so reverse mode,
forward mode (`jax.jvp`) and every higher derivative (`jax.hessian`) stay on oneDNN,
inside `lax.scan` too. On other platforms, under `jax.vmap`, and for any dtype but
float32 they are XLA's own convolution (`_reference`).

`available()` says whether the extension could be built and loaded; the CPU layers
(`layers.conv_general_dilated`, and `layers.conv_relu_max_pool`, whose kernel is built
into the same library: models/conv_pool.py) use it only then. `CNN_JAX_ONEDNN=0` turns
it off.
"""

import contextlib
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
from typing import Sequence

import jax
from jax import lax
from jax._src import dispatch  # apply_primitive, as JAX's own primitives use.
from jax.extend import core as jex_core
from jax.interpreters import ad, batching, mlir
import jax.numpy as jnp
import numpy as np

from cnn_jax import compile_cache

_CSRC = pathlib.Path(__file__).resolve().parent.parent / "csrc"
# The extension's sources: oneDNN's convolutions, and the tutorial CNN's fused first
# layer (models/conv_pool.py), which needs no oneDNN but the same build.
SOURCES = (_CSRC / "onednn_conv.cc", _CSRC / "conv_relu_pool.cc")
# FFI target names (for XLA:CPU) of the extension's handlers.
_TARGETS = {"cnn_jax_onednn_fwd": "OnednnConvForward",
            "cnn_jax_onednn_bwd_data": "OnednnConvBackwardData",
            "cnn_jax_onednn_bwd_weights": "OnednnConvBackwardWeights",
            "cnn_jax_conv_relu_pool_fwd": "ConvReluPoolForward",
            "cnn_jax_conv_relu_pool_kernel_grad": "ConvReluPoolKernelGrad",
            "cnn_jax_conv_relu_pool_bias_grad": "ConvReluPoolBiasGrad"}
_DIMS = ("NHWC", "HWIO", "NHWC")


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
                       "the oneDNN extension")
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
    raise RuntimeError(f"building the oneDNN extension failed:\n{' '.join(command)}\n"
                       f"{done.stderr[-4000:]}")
  os.replace(tmp, path)
  return path


@functools.cache
def _load() -> str | None:
  """Builds, loads and registers the extension: '' once done, else why not."""
  if os.environ.get("CNN_JAX_ONEDNN", "1") == "0":
    return "turned off by CNN_JAX_ONEDNN=0"
  try:
    library = ctypes.cdll.LoadLibrary(str(build()))
  except (RuntimeError, OSError) as e:
    # Said once, when a model first needs it: such a run is slower, not wrong.
    logging.warning("CPU convolutions by XLA, not oneDNN: %s", e)
    return str(e)
  for name, symbol in _TARGETS.items():
    jax.ffi.register_ffi_target(name,
                                jax.ffi.pycapsule(getattr(library, symbol)),
                                platform="cpu")
  return ""


_disabled = 0


@contextlib.contextmanager
def disabled():
  """Within it, `available()` is False: what is traced then uses XLA's convolutions.

  For XLA's cost analysis, which counts no FLOPs in a custom call (models/costs.py).
  """
  global _disabled
  _disabled += 1
  try:
    yield
  finally:
    _disabled -= 1


def unavailable_reason() -> str:
  """Why `conv` cannot run oneDNN here ('' when it can)."""
  return "disabled()" if _disabled else _load() or ""


def available() -> bool:
  return not unavailable_reason()


def _out_size(size, k, stride, pad):
  return (size + pad[0] + pad[1] - k) // stride + 1


def _y_shape(x_shape, w_shape, strides, padding):
  n, h, w, _ = x_shape
  kh, kw, _, cout = w_shape
  return (n, _out_size(h, kh, strides[0], padding[0]),
          _out_size(w, kw, strides[1], padding[1]), cout)


def _reference(name, a, b, *, strides, padding, shape):
  """What each primitive computes, by XLA's convolution and its transposes."""
  conv = lambda x, w: lax.conv_general_dilated(x, w, strides, padding,
                                               dimension_numbers=_DIMS)
  if name == "fwd":
    return conv(a, b)
  if name == "bwd_data":
    dy, w = a, b
    return jax.linear_transpose(lambda x: conv(x, w),
                                jax.ShapeDtypeStruct(shape, dy.dtype))(dy)[0]
  x, dy = a, b
  return jax.linear_transpose(lambda w: conv(x, w),
                              jax.ShapeDtypeStruct(shape, dy.dtype))(dy)[0]


def _ffi(name, a, b, strides, padding, shape):
  (pt, pb), (pl, pr) = padding
  call = jax.ffi.ffi_call(f"cnn_jax_onednn_{name}", jax.ShapeDtypeStruct(shape, a.dtype))
  return call(a, b, sh=np.int64(strides[0]), sw=np.int64(strides[1]), pt=np.int64(pt),
              pl=np.int64(pl), pb=np.int64(pb), pr=np.int64(pr))


def _strided_1x1(name, a, b, strides, padding, shape):
  """A strided 1x1 primitive as the unit-stride one on the pixels the kernel reads.

  oneDNN 3.2 runs a strided 1x1 convolution's gradients by first copying those pixels
  into its scratchpad ("reduce to unit stride"). With fewer than 8 input channels on
  AVX2 that copy writes past the scratchpad: heap corruption, or a wrong kernel
  gradient (tests/test_onednn.py). The same copy here, in XLA, is one strided slice.
  """
  x_shape = shape if name == "bwd_data" else a.shape
  y_shape = {"fwd": shape, "bwd_data": a.shape, "bwd_weights": b.shape}[name]
  n, h, w, ci = x_shape
  _, ho, wo, _ = y_shape
  (sh, sw), ((pt, pb), (pl, pr)) = strides, padding
  zero = np.zeros((), a.dtype)
  unit = (1, 1), ((0, 0), (0, 0))
  if name == "bwd_data":
    dx = _ffi(name, a, b, *unit, (n, ho, wo, ci))
    # The slice's transpose: each row and column back where it was read, zeros between.
    return lax.pad(dx, zero, ((0, 0, 0), (-pt, h + pt - (ho - 1) * sh - 1, sh - 1),
                              (-pl, w + pl - (wo - 1) * sw - 1, sw - 1), (0, 0, 0)))
  x = lax.pad(a, zero, ((0, 0, 0), (pt, pb, 0), (pl, pr, 0), (0, 0, 0)))
  x = lax.slice(x, (0, 0, 0, 0), (n, (ho - 1) * sh + 1, (wo - 1) * sw + 1, ci),
                (1, sh, sw, 1))
  return _ffi(name, x, b, *unit, shape)


def _oned(name, a, b, *, strides, padding, shape):
  """The primitive `name` by oneDNN (float32, when `available()`; else `_reference`)."""
  if a.dtype != jnp.float32 or b.dtype != jnp.float32 or not available():
    return _reference(name, a, b, strides=strides, padding=padding, shape=shape)
  kernel = shape if name == "bwd_weights" else b.shape
  if tuple(kernel[:2]) == (1, 1) and tuple(strides) != (1, 1):
    return _strided_1x1(name, a, b, strides, padding, shape)
  return _ffi(name, a, b, strides, padding, shape)


def _primitive(name):
  p = jex_core.Primitive(f"onednn_conv_{name}")
  p.def_impl(functools.partial(dispatch.apply_primitive, p))  # Eager: compiled alone.
  p.def_abstract_eval(
      lambda a, b, *, shape, **_: jax.core.ShapedArray(shape, jnp.result_type(a, b)))
  mlir.register_lowering(
      p, mlir.lower_fun(functools.partial(_reference, name), multiple_results=False))
  mlir.register_lowering(
      p, mlir.lower_fun(functools.partial(_oned, name), multiple_results=False),
      platform="cpu")

  def batch(args, dims, **params):
    # vmap (per-example gradients, say): XLA's convolution batches itself.
    in_axes = [d if isinstance(d, int) else None for d in dims]
    return jax.vmap(functools.partial(_reference, name, **params), in_axes=in_axes)(*args), 0

  batching.primitive_batchers[p] = batch
  return p


fwd_p = _primitive("fwd")
bwd_data_p = _primitive("bwd_data")
bwd_weights_p = _primitive("bwd_weights")


def _fwd(x, w, strides, padding):
  return fwd_p.bind(x, w, strides=strides, padding=padding,
                    shape=_y_shape(x.shape, w.shape, strides, padding))


def _bwd_data(dy, w, strides, padding, shape):
  return bwd_data_p.bind(dy, w, strides=strides, padding=padding, shape=tuple(shape))


def _bwd_weights(x, dy, strides, padding, shape):
  return bwd_weights_p.bind(x, dy, strides=strides, padding=padding, shape=tuple(shape))


# Transposes: <fwd(x, w), c> = <x, bwd_data(c, w)> = <w, bwd_weights(x, c)>.
ad.defbilinear(
    fwd_p,
    lambda ct, x, w, *, strides, padding, shape: _bwd_data(ct, w, strides, padding,
                                                           x.aval.shape),
    lambda ct, x, w, *, strides, padding, shape: _bwd_weights(x, ct, strides, padding,
                                                              w.aval.shape))
ad.defbilinear(
    bwd_data_p,
    lambda ct, dy, w, *, strides, padding, shape: _fwd(ct, w, strides, padding),
    lambda ct, dy, w, *, strides, padding, shape: _bwd_weights(ct, dy, strides, padding,
                                                               w.aval.shape))
ad.defbilinear(
    bwd_weights_p,
    lambda ct, x, dy, *, strides, padding, shape: _bwd_data(dy, ct, strides, padding,
                                                            x.aval.shape),
    lambda ct, x, dy, *, strides, padding, shape: _fwd(x, ct, strides, padding))


def conv(lhs: jax.Array, rhs: jax.Array, strides: Sequence[int],
         padding: Sequence[tuple[int, int]]) -> jax.Array:
  """A 2-D NHWC x HWIO convolution, equal to `lax.conv_general_dilated`.

  Args:
    lhs: [N, H, W, Cin] inputs.
    rhs: [KH, KW, Cin, Cout] kernel.
    strides: (stride_h, stride_w).
    padding: ((top, bottom), (left, right)) zero padding.
  """
  return _fwd(lhs, rhs, tuple(int(s) for s in strides),
              tuple((int(lo), int(hi)) for lo, hi in padding))
