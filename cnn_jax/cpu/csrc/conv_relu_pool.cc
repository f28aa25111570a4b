// A one-channel 3x3 VALID convolution, bias, ReLU and 2x2/2 max-pool in one pass, and
// the kernel and bias gradients of the winners' convolution, as XLA FFI handlers for
// XLA:CPU.
// The tutorial CNN's first layer: as XLA ops its [N, 26, 26, 32] activation (11 MB at
// batch 128) was written and read by the convolution, the ReLU, the pool, and again by
// their gradients; here each image's activation stays in registers and only the pooled
// output and each output's winner (int8) are written (docs/performance.md). Built by
// cnn_jax/cpu/build.py; cnn_jax/cpu/conv_pool.py defines the JAX primitives that call
// these handlers, and cnn_jax/cpu/fusion.py puts them where a program has these layers.
//
// Winner: which of the window's four positions (row-major) holds the first maximum of
// the pre-ReLU values, or -1 where that maximum is not positive (the ReLU's output and
// gradient are zero there), as select_and_scatter routes a max-pool's gradient.

#include <algorithm>
#include <cstdint>
#include <vector>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

// Channels per block: one vector register of floats. With 16-lane vectors on an AVX2
// CPU, GCC 12 ran out of its 16 registers and split the vector operations into scalar
// ones: the forward took 17 ms for 128 images on one thread, 1.2 ms with 8 lanes.
#if defined(__AVX512F__)
constexpr int kLanes = 16;
#else
constexpr int kLanes = 8;
#endif
constexpr int kTaps = 9;    // 3x3.
// The batch is cut into at most this many chunks, each summed on its own and the
// chunks then in order: the kernel gradient does not depend on the thread count.
constexpr int kChunks = 16;

struct Dims {
  int64_t n, h, w, c, ho, wo;
};

// Kernel [3, 3, 1, C] to [9][cp] (cp: C rounded up to whole blocks, zero-filled).
std::vector<float> PadChannels(const float* src, int64_t rows, int64_t c, int64_t cp) {
  std::vector<float> out(rows * cp, 0.0f);
  for (int64_t r = 0; r < rows; ++r) std::copy(src + r * c, src + r * c + c, &out[r * cp]);
  return out;
}

// kLanes channels as one GCC vector.
typedef float FV __attribute__((vector_size(4 * kLanes)));
typedef int32_t IV __attribute__((vector_size(4 * kLanes)));
typedef int8_t BV __attribute__((vector_size(kLanes)));

FV Load(const float* p) {
  FV v;
  __builtin_memcpy(&v, p, sizeof(v));
  return v;
}

void ForwardImage(const float* x, const float* wp, const float* bp, const Dims& d,
                  int64_t cp, float* y, int8_t* win) {
  for (int64_t c0 = 0; c0 < cp; c0 += kLanes) {
    FV wv[kTaps];
    for (int t = 0; t < kTaps; ++t) wv[t] = Load(wp + t * cp + c0);
    const FV bv = Load(bp + c0);
    const int64_t lanes = std::min<int64_t>(kLanes, d.c - c0);
    for (int64_t i = 0; i < d.ho; ++i) {
      for (int64_t j = 0; j < d.wo; ++j) {
        FV best;
        IV idx = {};
        for (int p = 0; p < 4; ++p) {
          const float* origin = x + (2 * i + (p >> 1)) * d.w + 2 * j + (p & 1);
          FV acc = bv;
          for (int ky = 0; ky < 3; ++ky)
            for (int kx = 0; kx < 3; ++kx) acc += origin[ky * d.w + kx] * wv[ky * 3 + kx];
          if (p == 0) {
            best = acc;
          } else {
            const IV more = acc > best;
            best = more ? acc : best;
            idx = more ? IV{} + p : idx;
          }
        }
        const IV on = best > 0.0f;
        const FV out = on ? best : FV{};
        const IV which = on ? idx : IV{} - 1;
        const int64_t at = (i * d.wo + j) * d.c + c0;
        if (lanes == kLanes) {
          const BV which8 = __builtin_convertvector(which, BV);
          __builtin_memcpy(y + at, &out, sizeof(out));
          __builtin_memcpy(win + at, &which8, sizeof(which8));
        } else {
          for (int64_t l = 0; l < lanes; ++l) {
            y[at + l] = out[l];
            win[at + l] = static_cast<int8_t>(which[l]);
          }
        }
      }
    }
  }
}

// Adds image x's share of the kernel gradient to acc [9][cp].
void KernelGradImage(const float* x, const int8_t* win, const float* ct, const Dims& d,
                     int64_t cp, float* acc) {
  for (int64_t c0 = 0; c0 < cp; c0 += kLanes) {
    const int64_t lanes = std::min<int64_t>(kLanes, d.c - c0);
    FV a[kTaps];
    for (int t = 0; t < kTaps; ++t) a[t] = Load(acc + t * cp + c0);
    for (int64_t i = 0; i < d.ho; ++i) {
      for (int64_t j = 0; j < d.wo; ++j) {
        const int64_t at = (i * d.wo + j) * d.c + c0;
        FV g = {};
        IV wi = IV{} - 1;
        if (lanes == kLanes) {
          BV w8;
          __builtin_memcpy(&w8, win + at, sizeof(w8));
          g = Load(ct + at), wi = __builtin_convertvector(w8, IV);
        } else {
          for (int64_t l = 0; l < lanes; ++l) g[l] = ct[at + l], wi[l] = win[at + l];
        }
        for (int p = 0; p < 4; ++p) {
          const float* origin = x + (2 * i + (p >> 1)) * d.w + 2 * j + (p & 1);
          const FV gp = wi == p ? g : FV{};
          for (int ky = 0; ky < 3; ++ky)
            for (int kx = 0; kx < 3; ++kx) a[ky * 3 + kx] += origin[ky * d.w + kx] * gp;
        }
      }
    }
    for (int t = 0; t < kTaps; ++t) __builtin_memcpy(acc + t * cp + c0, &a[t], sizeof(FV));
  }
}

ffi::Error CheckShapes(ffi::Span<const int64_t> xd, ffi::Span<const int64_t> wd,
                       ffi::Span<const int64_t> yd, Dims* d) {
  if (xd.size() != 4 || xd[3] != 1 || wd.size() != 4 || wd[0] != 3 || wd[1] != 3 ||
      wd[2] != 1 || yd.size() != 4) {
    return ffi::Error::InvalidArgument(
        "conv_relu_pool: wants x [N, H, W, 1], kernel [3, 3, 1, C], y [N, Ho, Wo, C]");
  }
  *d = {xd[0], xd[1], xd[2], wd[3], (xd[1] - 2) / 2, (xd[2] - 2) / 2};
  if (yd[0] != d->n || yd[1] != d->ho || yd[2] != d->wo || yd[3] != d->c) {
    return ffi::Error::InvalidArgument("conv_relu_pool: output shape mismatch");
  }
  return ffi::Error::Success();
}

int64_t Padded(int64_t c) { return (c + kLanes - 1) / kLanes * kLanes; }

ffi::Error Forward(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> w,
                   ffi::Buffer<ffi::F32> b, ffi::ResultBuffer<ffi::F32> y,
                   ffi::ResultBuffer<ffi::S8> win) {
  Dims d;
  if (auto e = CheckShapes(x.dimensions(), w.dimensions(), y->dimensions(), &d);
      e.failure()) {
    return e;
  }
  const int64_t cp = Padded(d.c);
  const std::vector<float> wp = PadChannels(w.typed_data(), kTaps, d.c, cp);
  const std::vector<float> bp = PadChannels(b.typed_data(), 1, d.c, cp);
  const float* xs = x.typed_data();
  float* ys = y->typed_data();
  int8_t* ws = win->typed_data();
  const int64_t in = d.h * d.w, out = d.ho * d.wo * d.c;
#pragma omp parallel for schedule(static)
  for (int64_t n = 0; n < d.n; ++n) {
    ForwardImage(xs + n * in, wp.data(), bp.data(), d, cp, ys + n * out, ws + n * out);
  }
  return ffi::Error::Success();
}

ffi::Error KernelGrad(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::S8> win,
                      ffi::Buffer<ffi::F32> ct, ffi::ResultBuffer<ffi::F32> dw) {
  Dims d;
  if (auto e = CheckShapes(x.dimensions(), dw->dimensions(), ct.dimensions(), &d);
      e.failure()) {
    return e;
  }
  const int64_t cp = Padded(d.c);
  const int64_t chunks = std::max<int64_t>(1, std::min<int64_t>(kChunks, d.n));
  std::vector<float> partial(chunks * kTaps * cp, 0.0f);
  const float* xs = x.typed_data();
  const int8_t* ws = win.typed_data();
  const float* cs = ct.typed_data();
  const int64_t in = d.h * d.w, out = d.ho * d.wo * d.c;
#pragma omp parallel for schedule(static)
  for (int64_t k = 0; k < chunks; ++k) {
    for (int64_t n = d.n * k / chunks; n < d.n * (k + 1) / chunks; ++n) {
      KernelGradImage(xs + n * in, ws + n * out, cs + n * out, d, cp,
                      &partial[k * kTaps * cp]);
    }
  }
  float* dws = dw->typed_data();
  for (int t = 0; t < kTaps; ++t)
    for (int64_t c = 0; c < d.c; ++c) {
      float sum = 0.0f;
      for (int64_t k = 0; k < chunks; ++k) sum += partial[(k * kTaps + t) * cp + c];
      dws[t * d.c + c] = sum;
    }
  return ffi::Error::Success();
}

// The bias gradient: the sum of ct over the outputs whose winner is not -1.
ffi::Error BiasGrad(ffi::Buffer<ffi::F32> ct, ffi::Buffer<ffi::S8> win,
                    ffi::ResultBuffer<ffi::F32> db) {
  const auto cd = ct.dimensions();
  const auto wd = win.dimensions();
  if (cd.size() != 4 || wd.size() != 4 || !std::equal(cd.begin(), cd.end(), wd.begin()) ||
      db->dimensions().size() != 1 ||
      db->dimensions()[0] != cd[3]) {
    return ffi::Error::InvalidArgument(
        "conv_relu_pool: wants ct and winners [N, Ho, Wo, C], db [C]");
  }
  const int64_t c = cd[3], positions = cd[0] * cd[1] * cd[2];
  const float* cs = ct.typed_data();
  const int8_t* ws = win.typed_data();
  float* out = db->typed_data();
  std::fill(out, out + c, 0.0f);
  for (int64_t p = 0; p < positions; ++p)
    for (int64_t l = 0; l < c; ++l) out[l] += ws[p * c + l] >= 0 ? cs[p * c + l] : 0.0f;
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(ConvReluPoolBiasGrad, BiasGrad,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::S8>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());
XLA_FFI_DEFINE_HANDLER_SYMBOL(ConvReluPoolForward, Forward,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::S8>>());
XLA_FFI_DEFINE_HANDLER_SYMBOL(ConvReluPoolKernelGrad, KernelGrad,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::S8>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());
