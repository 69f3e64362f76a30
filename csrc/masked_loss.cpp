// Per-token normalised MSE on the CPU, and its gradient with respect to the prediction; the targets
// are rebuilt from the video on each call, never stored. The op around it: vmae2_fast/ops/masked_loss.py.
#include <cmath>
#include <vector>

#include "common.h"

namespace vmae2_fast {

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

}  // namespace vmae2_fast
