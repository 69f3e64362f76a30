// C++ (OpenMP) CPU versions of the fused VideoMAE V2 ops; the Python side (vmae2_fast/ops/cpp.py)
// wraps them in autograd functions. Video reads are strided (any layout), GEMMs go to ATen (BLAS),
// reductions accumulate in float32 (float64 for float64 inputs).
#include <torch/extension.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <cmath>
#include <vector>

namespace {

struct Cube {  // where each token's cube sits in a (B, C, T, H, W) video
  int64_t gh, gw, tub, p;
  int64_t sb, sc, st, sh, sw;
  Cube(const at::Tensor& v, int64_t p_, int64_t tub_)
      : gh(v.size(3) / p_), gw(v.size(4) / p_), tub(tub_), p(p_),
        sb(v.stride(0)), sc(v.stride(1)), st(v.stride(2)), sh(v.stride(3)), sw(v.stride(4)) {}
  int64_t base(int64_t b, int64_t tok) const {
    const int64_t tt = tok / (gh * gw), hh = (tok / gw) % gh, ww = tok % gw;
    return b * sb + tt * tub * st + hh * p * sh + ww * p * sw;
  }
};

void check_video(const at::Tensor& video, int64_t p, int64_t tub) {
  TORCH_CHECK(video.dim() == 5, "video must be (B, C, T, H, W)");
  TORCH_CHECK(video.size(2) % tub == 0 && video.size(3) % p == 0 && video.size(4) % p == 0,
              "video is not divisible into cubes");
}

}  // namespace

// The cubes of tokens idx (B, k) as rows (B*k, C*t*p*p) in (c, dt, row, col) order, dtype of video.
at::Tensor gather_cubes(const at::Tensor& video, const at::Tensor& idx, int64_t p, int64_t tub) {
  check_video(video, p, tub);
  const Cube cb(video, p, tub);
  const int64_t B = idx.size(0), k = idx.size(1), C = video.size(1), K = C * tub * p * p;
  auto idx64 = idx.to(at::kLong).contiguous();
  const int64_t* ip = idx64.data_ptr<int64_t>();
  auto out = at::empty({B * k, K}, video.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, video.scalar_type(), "gather_cubes", [&] {
    const scalar_t* v = video.data_ptr<scalar_t>();
    scalar_t* o = out.data_ptr<scalar_t>();
    at::parallel_for(0, B * k, 1, [&](int64_t begin, int64_t end) {
      for (int64_t m = begin; m < end; ++m) {
        const int64_t b = m / k;
        const scalar_t* src = v + cb.base(b, ip[m]);
        scalar_t* dst = o + m * K;
        for (int64_t c = 0; c < C; ++c)
          for (int64_t dt = 0; dt < tub; ++dt)
            for (int64_t r = 0; r < p; ++r) {
              const scalar_t* row = src + c * cb.sc + dt * cb.st + r * cb.sh;
              for (int64_t col = 0; col < p; ++col) *dst++ = row[col * cb.sw];
            }
      }
    });
  });
  return out;
}

// rows (B*k, C) += table (N, C) gathered at idx (B, k), in place, in rows' dtype.
void add_table_rows(at::Tensor& rows, const at::Tensor& table, const at::Tensor& idx, int64_t row_stride,
                    int64_t row_offset, int64_t per_batch) {
  const int64_t B = idx.size(0), k = idx.size(1), C = table.size(1);
  auto idx64 = idx.to(at::kLong).contiguous();
  auto tab = table.to(rows.scalar_type()).contiguous();
  const int64_t* ip = idx64.data_ptr<int64_t>();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, rows.scalar_type(), "add_table", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* t = tab.data_ptr<scalar_t>();
    scalar_t* o = rows.data_ptr<scalar_t>();
    at::parallel_for(0, B * k, 16, [&](int64_t begin, int64_t end) {
      for (int64_t m = begin; m < end; ++m) {
        scalar_t* dst = o + ((m / k) * per_batch + row_offset + m % k) * row_stride;
        const scalar_t* src = t + ip[m] * C;
        for (int64_t c = 0; c < C; ++c) dst[c] = static_cast<scalar_t>(acc_t(dst[c]) + acc_t(src[c]));
      }
    });
  });
}

// Visible patch embedding forward: (B*k, C_e) = cubes @ W^T + bias + pos[idx].
at::Tensor embed_forward(const at::Tensor& video, const at::Tensor& w2d, const c10::optional<at::Tensor>& bias,
                         const at::Tensor& pos2d, const at::Tensor& idx, int64_t p, int64_t tub,
                         at::ScalarType out_dtype) {
  auto cubes = gather_cubes(video, idx, p, tub).to(out_dtype);
  auto w = w2d.to(out_dtype);
  at::Tensor out = bias.has_value() ? at::addmm(bias->to(out_dtype), cubes, w.t()) : at::mm(cubes, w.t());
  add_table_rows(out, pos2d, idx, out.size(1), 0, idx.size(1));
  return out;
}

// Decoder assembly forward: (B, k_v + k_d, C_d).
at::Tensor decoder_forward(const at::Tensor& z, const at::Tensor& w, const at::Tensor& pos2d,
                           const at::Tensor& vis, const at::Tensor& dec, const at::Tensor& token,
                           at::ScalarType out_dtype) {
  const int64_t B = z.size(0), kv = z.size(1), kd = dec.size(1), Cd = w.size(0);
  auto out = at::empty({B, kv + kd, Cd}, z.options().dtype(out_dtype));
  auto zc = z.to(out_dtype);
  auto wt = w.to(out_dtype).t();
  for (int64_t b = 0; b < B; ++b) {  // each sample's visible block is contiguous in `out`
    auto dst = out.select(0, b).narrow(0, 0, kv);
    at::mm_out(dst, zc.select(0, b), wt);
  }
  out.narrow(1, kv, kd).copy_(token.reshape({1, 1, Cd}).expand({B, kd, Cd}));
  add_table_rows(out, pos2d, vis, Cd, 0, kv + kd);
  add_table_rows(out, pos2d, dec, Cd, kv, kv + kd);
  return out;
}

namespace {

// Target of one token into tgt (P*C, (pixel, channel) order) in acc_t; returns nothing.
template <typename scalar_t, typename acc_t>
void token_target(const scalar_t* src, const Cube& cb, int64_t C, const double* mean, const double* std,
                  bool normalize, double eps, acc_t* tgt) {
  const int64_t P = cb.tub * cb.p * cb.p;
  for (int64_t c = 0; c < C; ++c) {
    acc_t sum = 0;
    for (int64_t i = 0; i < P; ++i) {
      const int64_t dt = i / (cb.p * cb.p), r = (i / cb.p) % cb.p, col = i % cb.p;
      const acc_t x = acc_t(src[c * cb.sc + dt * cb.st + r * cb.sh + col * cb.sw]) * acc_t(std[c]) + acc_t(mean[c]);
      tgt[i * C + c] = x;
      sum += x;
    }
    if (!normalize) continue;
    const acc_t mu = sum / acc_t(P);
    acc_t ss = 0;
    for (int64_t i = 0; i < P; ++i) {
      const acc_t d = tgt[i * C + c] - mu;
      ss += d * d;
    }
    const acc_t denom = std::sqrt(ss / acc_t(P - 1)) + acc_t(eps);
    for (int64_t i = 0; i < P; ++i) tgt[i * C + c] = (tgt[i * C + c] - mu) / denom;
  }
}

}  // namespace

// Per-token MSE (B, k) against the normalised targets; with grad_tok given, instead the gradient
// of sum(grad_tok * mse) with respect to pred (same shape and dtype as pred).
at::Tensor mse_tokens(const at::Tensor& pred, const at::Tensor& video, const at::Tensor& dec, int64_t p,
                      int64_t tub, std::vector<double> mean, std::vector<double> std, bool normalize,
                      double eps, const c10::optional<at::Tensor>& grad_tok) {
  check_video(video, p, tub);
  const Cube cb(video, p, tub);
  const int64_t B = dec.size(0), k = dec.size(1), C = video.size(1), P = tub * p * p, D = C * P;
  TORCH_CHECK(pred.is_contiguous() && pred.numel() == B * k * D, "pred must be contiguous (B, k, D)");
  TORCH_CHECK((int64_t)mean.size() == C && (int64_t)std.size() == C, "mean/std need one value per channel");
  auto idx64 = dec.to(at::kLong).contiguous();
  const int64_t* ip = idx64.data_ptr<int64_t>();
  const bool backward = grad_tok.has_value();
  at::Tensor out, g;
  if (backward) {
    g = grad_tok->to(pred.scalar_type() == at::kDouble ? at::kDouble : at::kFloat).contiguous();
    out = at::empty_like(pred);
  } else {
    out = at::empty({B, k}, pred.options().dtype(pred.scalar_type() == at::kDouble ? at::kDouble : at::kFloat));
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, video.scalar_type(), "mse_video", [&] {
    using vid_t = scalar_t;
    AT_DISPATCH_FLOATING_TYPES(pred.scalar_type(), "mse_pred", [&] {
      using acc_t = scalar_t;  // pred is float32 or float64 here (the wrapper widens half types)
      const vid_t* v = video.data_ptr<vid_t>();
      const acc_t* pr = pred.data_ptr<acc_t>();
      acc_t* o = out.data_ptr<acc_t>();
      const acc_t* gp = backward ? g.data_ptr<acc_t>() : nullptr;
      at::parallel_for(0, B * k, 4, [&](int64_t begin, int64_t end) {
        std::vector<acc_t> tgt(D);
        for (int64_t m = begin; m < end; ++m) {
          token_target<vid_t, acc_t>(v + cb.base(m / k, ip[m]), cb, C, mean.data(), std.data(), normalize,
                                     eps, tgt.data());
          const acc_t* row = pr + m * D;
          if (backward) {
            const acc_t scale = gp[m] * acc_t(2) / acc_t(D);
            for (int64_t i = 0; i < D; ++i) o[m * D + i] = (row[i] - tgt[i]) * scale;
          } else {
            acc_t s = 0;
            for (int64_t i = 0; i < D; ++i) {
              const acc_t e = row[i] - tgt[i];
              s += e * e;
            }
            o[m] = s / acc_t(D);
          }
        }
      });
    });
  });
  return out;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("gather_cubes", &gather_cubes, "visible cubes as rows (c, dt, row, col)");
  m.def("embed_forward", &embed_forward, "visible patch embedding forward");
  m.def("decoder_forward", &decoder_forward, "decoder assembly forward");
  m.def("mse_tokens", &mse_tokens, "per-token normalised MSE, or its pred gradient");
}
