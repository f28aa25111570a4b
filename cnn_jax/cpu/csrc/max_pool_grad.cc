// The max-pool gradient (XLA's SelectAndScatter with a >= select and an add scatter:
// `lax.select_and_scatter_add_p`, what JAX's transpose of a max `reduce_window`
// emits) for NHWC float32, as an XLA FFI handler for XLA:CPU, whose own
// SelectAndScatter is a scalar loop that took most of a pooling network's step
// (docs/performance.md). cnn_jax/cpu/pool.py lowers the primitive onto it.
//
// Each output gradient goes to its window's first maximum (row-major), as XLA's does;
// positions in the padding are never chosen. Images are independent, one thread each
// at a time (OpenMP), so the sums are in the same order whatever the thread count.

#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

ffi::Error MaxPoolGrad(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> dy,
                       ffi::ResultBuffer<ffi::F32> dx, int64_t kh, int64_t kw,
                       int64_t sh, int64_t sw, int64_t pt, int64_t pl) {
  auto xd = x.dimensions(), yd = dy.dimensions();
  if (xd.size() != 4 || yd.size() != 4) {
    return ffi::Error::InvalidArgument("max_pool_grad: operands must be 4-D");
  }
  const int64_t n = xd[0], h = xd[1], w = xd[2], c = xd[3], ho = yd[1], wo = yd[2];
  const float* xp = x.typed_data();
  const float* dyp = dy.typed_data();
  float* dxp = dx->typed_data();
#pragma omp parallel for schedule(static)
  for (int64_t b = 0; b < n; ++b) {
    const float* xb = xp + b * h * w * c;
    const float* dyb = dyp + b * ho * wo * c;
    float* dxb = dxp + b * h * w * c;
    std::memset(dxb, 0, sizeof(float) * h * w * c);
    std::vector<float> best(c);
    std::vector<int64_t> at(c);
    for (int64_t oy = 0; oy < ho; ++oy) {
      const int64_t y0 = oy * sh - pt;
      for (int64_t ox = 0; ox < wo; ++ox) {
        const int64_t x0 = ox * sw - pl;
        for (int64_t ch = 0; ch < c; ++ch) {
          best[ch] = -std::numeric_limits<float>::infinity();
          at[ch] = -1;
        }
        for (int64_t ky = 0; ky < kh; ++ky) {
          const int64_t iy = y0 + ky;
          if (iy < 0 || iy >= h) continue;
          for (int64_t kx = 0; kx < kw; ++kx) {
            const int64_t ix = x0 + kx;
            if (ix < 0 || ix >= w) continue;
            const int64_t base = (iy * w + ix) * c;
            const float* row = xb + base;
            for (int64_t ch = 0; ch < c; ++ch) {
              // XLA's select: the current choice stays while current >= candidate, so
              // the first maximum wins ties.
              const float v = row[ch];
              const bool take = at[ch] < 0 || !(best[ch] >= v);
              best[ch] = take ? v : best[ch];
              at[ch] = take ? base + ch : at[ch];
            }
          }
        }
        const float* g = dyb + (oy * wo + ox) * c;
        for (int64_t ch = 0; ch < c; ++ch) {
          if (at[ch] >= 0) dxb[at[ch]] += g[ch];
        }
      }
    }
  }
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(
    CpuMaxPoolGrad, MaxPoolGrad,
    ffi::Ffi::Bind().Arg<ffi::Buffer<ffi::F32>>().Arg<ffi::Buffer<ffi::F32>>()
        .Ret<ffi::Buffer<ffi::F32>>().Attr<int64_t>("kh").Attr<int64_t>("kw")
        .Attr<int64_t>("sh").Attr<int64_t>("sw").Attr<int64_t>("pt").Attr<int64_t>("pl"));
