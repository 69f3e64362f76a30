// Visible patch embedding on the CPU: the visible cubes gathered from a strided video, one GEMM
// (ATen/BLAS), bias and position rows added. The op around it: vmae2_fast/ops/patch_embed.py.
#include "common.h"

namespace vmae2_fast {

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

}  // namespace vmae2_fast
