// Decoder assembly on the CPU: per-sample GEMM into the visible block, the mask token broadcast into
// the rest, position rows added. The op around it: vmae2_fast/ops/decoder_assembly.py.
#include "common.h"

namespace vmae2_fast {

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

}  // namespace vmae2_fast
