// The Python module of the C++ CPU ops (built on first use by vmae2_fast/ops/cpp.py).
#include <torch/extension.h>

#include "common.h"

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("gather_cubes", &vmae2_fast::gather_cubes, "visible cubes as rows (c, dt, row, col)");
  m.def("embed_forward", &vmae2_fast::embed_forward, "visible patch embedding forward");
  m.def("decoder_forward", &vmae2_fast::decoder_forward, "decoder assembly forward");
  m.def("mse_tokens", &vmae2_fast::mse_tokens, "per-token normalised MSE, or its pred gradient");
}
