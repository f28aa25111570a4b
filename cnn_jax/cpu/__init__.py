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

import importlib

# Imported on first use, so that `cnn_jax.cpu.flags` can be imported (and XLA's and
# JAX's environment set) before JAX is.
_ATTRIBUTES = {"enable": "lowering", "fuse": "fusion", "active": "switch",
               "disabled": "switch", "unavailable_reason": "switch", "ENV": "switch"}


def __getattr__(name):
  if name in _ATTRIBUTES:
    return getattr(importlib.import_module(f"cnn_jax.cpu.{_ATTRIBUTES[name]}"), name)
  raise AttributeError(f"module 'cnn_jax.cpu' has no attribute {name!r}")


def __dir__():
  return sorted(_ATTRIBUTES)
