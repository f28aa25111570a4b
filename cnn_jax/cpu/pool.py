"""The max-pool gradient on a kernel of ours: a CPU lowering of
`lax.select_and_scatter_add_p`.

JAX differentiates a max `reduce_window` (`nn.max_pool`, `lax.reduce_window` with
`lax.max`) into `select_and_scatter_add`: each output gradient added at its window's
first maximum. XLA:CPU runs it as a scalar loop; `csrc/max_pool_grad.cc` runs it per
image with the channels innermost, for NHWC float32 with any window, stride and
padding over the two spatial dimensions. Anything else (other layouts, dtypes or
select functions) is lowered by XLA's own rule.
"""

import jax
from jax import lax
import jax.numpy as jnp
import numpy as np


def applies(source_dtype, operand_dtype, *, select_prim, window_dimensions,
            window_strides, padding, **unused) -> bool:
  """Whether the kernel computes this `select_and_scatter_add`."""
  return (select_prim is lax.ge_p and len(window_dimensions) == 4
          and source_dtype == operand_dtype == jnp.float32
          and window_dimensions[0] == window_dimensions[3] == 1
          and window_strides[0] == window_strides[3] == 1
          and tuple(padding[0]) == tuple(padding[3]) == (0, 0))


def run(source, operand, *, window_dimensions, window_strides, padding, **unused):
  """The max-pool gradient: `source` [N, Ho, Wo, C] added into zeros shaped like
  `operand` [N, H, W, C], each at its window's first maximum."""
  call = jax.ffi.ffi_call("cnn_jax_max_pool_grad",
                          jax.ShapeDtypeStruct(operand.shape, operand.dtype))
  i = np.int64
  return call(operand, source, kh=i(window_dimensions[1]), kw=i(window_dimensions[2]),
              sh=i(window_strides[1]), sw=i(window_strides[2]), pt=i(padding[1][0]),
              pl=i(padding[2][0]))
