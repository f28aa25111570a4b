// 2-D convolutions (NHWC activations, float32) and both their gradients by oneDNN,
// as XLA FFI handlers for XLA:CPU: strides, dilations, padding and groups (depthwise
// included). oneDNN, the library behind TensorFlow's and PyTorch's CPU convolutions,
// ran the zoo's 3x3 layers at 160-210 GFLOP/s where XLA:CPU's own (Eigen) ones ran at
// 110-145 (docs/performance.md). cnn_jax/cpu/conv.py lowers JAX's convolutions onto
// these handlers.
//
// Each handler takes its shapes from its buffers and its strides, dilations, padding
// and groups from attributes; it builds oneDNN's primitive once per shape (cached,
// under a mutex) and runs it on the caller's buffers, with a scratchpad of its own, so
// that XLA may run several at once. Activations stay NHWC; the kernel is laid out
// [KH, KW, I/G, G, O/G] (oneDNN's "hwigo": JAX's HWIO kernel of a grouped
// convolution, reshaped) and goes through oneDNN's preferred layout by a reorder
// where that differs.

#include <array>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>

#include "oneapi/dnnl/dnnl.hpp"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;
using dnnl::memory;
using tag = dnnl::memory::format_tag;
using dt = dnnl::memory::data_type;

namespace {

enum Op : int64_t { kForward = 0, kBackwardData = 1, kBackwardWeights = 2 };

// op, n, h, w, ci, ho, wo, co, kh, kw, sh, sw, dh, dw, pad top, left, bottom, right, g.
using Key = std::array<int64_t, 19>;

struct Entry {
  dnnl::primitive conv;
  memory::desc src, weights, dst;  // As the primitive wants them.
  memory::desc user_weights;        // hwio, or hwigo with groups.
  memory::desc scratchpad;
};

dnnl::engine& Engine() {
  static dnnl::engine* engine = new dnnl::engine(dnnl::engine::kind::cpu, 0);
  return *engine;
}

std::unordered_map<int, memory> Args(Op op, const memory& src, const memory& w,
                                     const memory& dst, const memory& scratchpad) {
  if (op == kForward) {
    return {{DNNL_ARG_SRC, src}, {DNNL_ARG_WEIGHTS, w}, {DNNL_ARG_DST, dst},
            {DNNL_ARG_SCRATCHPAD, scratchpad}};
  }
  if (op == kBackwardData) {
    return {{DNNL_ARG_DIFF_SRC, src}, {DNNL_ARG_WEIGHTS, w}, {DNNL_ARG_DIFF_DST, dst},
            {DNNL_ARG_SCRATCHPAD, scratchpad}};
  }
  return {{DNNL_ARG_SRC, src}, {DNNL_ARG_DIFF_WEIGHTS, w}, {DNNL_ARG_DIFF_DST, dst},
          {DNNL_ARG_SCRATCHPAD, scratchpad}};
}

// oneDNN's first choice of implementation for `op` at this shape. Always the first:
// timing its candidates and keeping the fastest was about 5% faster on VGG-BN, but a
// choice by timing can differ between processes, and with it the low bits of a
// resumed run (docs/performance.md).
Entry MakeEntry(const Key& k) {
  const auto [op, n, h, w, ci, ho, wo, co, kh, kw, sh, sw, dh, dw, pt, pl, pb, pr, g] = k;
  auto& engine = Engine();
  memory::desc src({n, ci, h, w}, dt::f32, tag::nhwc);
  memory::desc dst({n, co, ho, wo}, dt::f32, tag::nhwc);
  memory::dims wdims = g == 1 ? memory::dims{co, ci, kh, kw}
                              : memory::dims{g, co / g, ci / g, kh, kw};
  memory::desc any_weights(wdims, dt::f32, tag::any);
  // oneDNN counts dilation from 0 (no gaps), JAX from 1.
  memory::dims strides{sh, sw}, dilates{dh - 1, dw - 1}, pad_l{pt, pl}, pad_r{pb, pr};
  const auto direct = dnnl::algorithm::convolution_direct;
  dnnl::primitive_attr attr;
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  auto fwd = dnnl::convolution_forward::primitive_desc(
      engine, dnnl::prop_kind::forward_training, direct, src, any_weights, dst, strides,
      dilates, pad_l, pad_r, attr);
  Entry e;
  e.user_weights = memory::desc(wdims, dt::f32, g == 1 ? tag::hwio : tag::hwigo);
  if (op == kForward) {
    e.conv = dnnl::convolution_forward(fwd);
    e.src = fwd.src_desc(), e.weights = fwd.weights_desc(), e.dst = fwd.dst_desc();
    e.scratchpad = fwd.scratchpad_desc();
  } else if (op == kBackwardData) {
    auto pd = dnnl::convolution_backward_data::primitive_desc(
        engine, direct, src, any_weights, dst, strides, dilates, pad_l, pad_r, fwd, attr);
    e.conv = dnnl::convolution_backward_data(pd);
    e.src = pd.diff_src_desc(), e.weights = pd.weights_desc(), e.dst = pd.diff_dst_desc();
    e.scratchpad = pd.scratchpad_desc();
  } else {
    auto pd = dnnl::convolution_backward_weights::primitive_desc(
        engine, direct, src, any_weights, dst, strides, dilates, pad_l, pad_r, fwd, attr);
    e.conv = dnnl::convolution_backward_weights(pd);
    e.src = pd.src_desc(), e.weights = pd.diff_weights_desc(), e.dst = pd.diff_dst_desc();
    e.scratchpad = pd.scratchpad_desc();
  }
  return e;
}

const Entry& GetEntry(const Key& k) {
  static std::mutex mu;
  static auto* cache = new std::map<Key, std::unique_ptr<Entry>>();
  std::lock_guard<std::mutex> lock(mu);
  auto& slot = (*cache)[k];
  if (!slot) slot = std::make_unique<Entry>(MakeEntry(k));
  return *slot;
}

struct Params {
  int64_t sh, sw, dh, dw, pt, pl, pb, pr, g;
};

// Runs `op` with x [n,h,w,ci], weights [kh,kw,ci/g,(g,)co/g] and y [n,ho,wo,co]; the
// one that is the output is written.
ffi::Error Run(Op op, float* x, float* weights, float* y, ffi::Span<const int64_t> xd,
               ffi::Span<const int64_t> wd, ffi::Span<const int64_t> yd, const Params& p) {
  if (xd.size() != 4 || yd.size() != 4 || wd.size() != (p.g == 1 ? 4u : 5u)) {
    return ffi::Error::InvalidArgument("onednn_conv: unexpected operand ranks");
  }
  Key k{op, xd[0], xd[1], xd[2], xd[3], yd[1], yd[2], yd[3], wd[0], wd[1],
        p.sh, p.sw, p.dh, p.dw, p.pt, p.pl, p.pb, p.pr, p.g};
  try {
    const Entry& e = GetEntry(k);
    auto& engine = Engine();
    dnnl::stream stream(engine);
    memory src(e.src, engine, x), dst(e.dst, engine, y);
    memory user_w(e.user_weights, engine, weights);
    // Uninitialised (std::vector would zero them on every call).
    std::unique_ptr<char[]> scratch(new char[e.scratchpad.get_size() + 1]);
    memory scratchpad(e.scratchpad, engine, scratch.get());
    memory w = user_w;
    std::unique_ptr<char[]> w_buffer;
    bool reorder = e.weights != e.user_weights;
    if (reorder) {
      w_buffer.reset(new char[e.weights.get_size()]);
      w = memory(e.weights, engine, w_buffer.get());
      if (op != kBackwardWeights) dnnl::reorder(user_w, w).execute(stream, user_w, w);
    }
    e.conv.execute(stream, Args(op, src, w, dst, scratchpad));
    if (op == kBackwardWeights && reorder) dnnl::reorder(w, user_w).execute(stream, w, user_w);
    stream.wait();
  } catch (const dnnl::error& err) {
    return ffi::Error::Internal(std::string("onednn_conv: ") + err.what());
  }
  return ffi::Error::Success();
}

using F32 = ffi::Buffer<ffi::F32>;
using F32Out = ffi::ResultBuffer<ffi::F32>;

ffi::Error Forward(F32 x, F32 w, F32Out y, int64_t sh, int64_t sw, int64_t dh,
                   int64_t dw, int64_t pt, int64_t pl, int64_t pb, int64_t pr, int64_t g) {
  return Run(kForward, x.typed_data(), w.typed_data(), y->typed_data(), x.dimensions(),
             w.dimensions(), y->dimensions(), {sh, sw, dh, dw, pt, pl, pb, pr, g});
}

ffi::Error BackwardData(F32 dy, F32 w, F32Out dx, int64_t sh, int64_t sw, int64_t dh,
                        int64_t dw, int64_t pt, int64_t pl, int64_t pb, int64_t pr,
                        int64_t g) {
  return Run(kBackwardData, dx->typed_data(), w.typed_data(), dy.typed_data(),
             dx->dimensions(), w.dimensions(), dy.dimensions(),
             {sh, sw, dh, dw, pt, pl, pb, pr, g});
}

ffi::Error BackwardWeights(F32 x, F32 dy, F32Out dw_out, int64_t sh, int64_t sw,
                           int64_t dh, int64_t dw, int64_t pt, int64_t pl, int64_t pb,
                           int64_t pr, int64_t g) {
  return Run(kBackwardWeights, x.typed_data(), dw_out->typed_data(), dy.typed_data(),
             x.dimensions(), dw_out->dimensions(), dy.dimensions(),
             {sh, sw, dh, dw, pt, pl, pb, pr, g});
}

#define CONV_BINDING                                                                 \
  ffi::Ffi::Bind().Arg<F32>().Arg<F32>().Ret<F32>().Attr<int64_t>("sh")              \
      .Attr<int64_t>("sw").Attr<int64_t>("dh").Attr<int64_t>("dw")                  \
      .Attr<int64_t>("pt").Attr<int64_t>("pl").Attr<int64_t>("pb")                  \
      .Attr<int64_t>("pr").Attr<int64_t>("g")

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(OnednnConvForward, Forward, CONV_BINDING);
XLA_FFI_DEFINE_HANDLER_SYMBOL(OnednnConvBackwardData, BackwardData, CONV_BINDING);
XLA_FFI_DEFINE_HANDLER_SYMBOL(OnednnConvBackwardWeights, BackwardWeights, CONV_BINDING);
