// What the C++ CPU versions of the fused ops share: where a token's cube sits in a strided video,
// and adding position-table rows in place. Accumulation is float32 (float64 for float64 inputs).
#pragma once
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <vector>

namespace vmae2_fast {

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

inline void check_video(const at::Tensor& video, int64_t p, int64_t tub) {
  TORCH_CHECK(video.dim() == 5, "video must be (B, C, T, H, W)");
  TORCH_CHECK(video.size(2) % tub == 0 && video.size(3) % p == 0 && video.size(4) % p == 0,
              "video is not divisible into cubes");
}

// rows (B*k, C) += table (N, C) gathered at idx (B, k), in place, in rows' dtype.
inline void add_table_rows(at::Tensor& rows, const at::Tensor& table, const at::Tensor& idx, int64_t row_stride,
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

at::Tensor gather_cubes(const at::Tensor& video, const at::Tensor& idx, int64_t p, int64_t tub);
at::Tensor embed_forward(const at::Tensor& video, const at::Tensor& w2d, const c10::optional<at::Tensor>& bias,
                         const at::Tensor& pos2d, const at::Tensor& idx, int64_t p, int64_t tub,
                         at::ScalarType out_dtype);
at::Tensor decoder_forward(const at::Tensor& z, const at::Tensor& w, const at::Tensor& pos2d,
                           const at::Tensor& vis, const at::Tensor& dec, const at::Tensor& token,
                           at::ScalarType out_dtype);
at::Tensor mse_tokens(const at::Tensor& pred, const at::Tensor& video, const at::Tensor& dec, int64_t p,
                      int64_t tub, std::vector<double> mean, std::vector<double> std, bool normalize,
                      double eps, const c10::optional<at::Tensor>& grad_tok);

}  // namespace vmae2_fast
