// videogpt_fast._C: torch.library custom ops for fast VideoGPT sampling.
//
//   videogpt_fast::decode_attention(Tensor q, Tensor k, Tensor v, Tensor pos, Tensor? layout_row,
//                                   int block) -> Tensor
//       One query per (batch, head) over a KV cache: q (B, H, D), k/v (B, H, L, D), pos a one-element
//       int64 device tensor; key j is visible iff j <= pos and (no layout_row or
//       layout_row[h, j / block] != 0). Split-K "flash-decoding", fp32 accumulation, D <= 256.
//
// The CUDA kernel lives in decode_attention.cu; a Meta kernel here lets torch.compile and FakeTensor
// tracing see the output shape. Being a real custom op, it is captured by CUDA graphs. (A codebook
// argmin op lived here until 2026-11-30: on an H200 the Triton search was 1.4-5.6x faster and exact,
// so it was deleted; see benchmarks/results/nvidia-h200-2026-11-30.)
#include <torch/extension.h>
#include <torch/library.h>

namespace videogpt_fast {

at::Tensor decode_attention_cuda(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                 const at::Tensor& pos, const c10::optional<at::Tensor>& layout_row,
                                 int64_t block);

namespace {

at::Tensor decode_attention_meta(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                 const at::Tensor& pos, const c10::optional<at::Tensor>& layout_row,
                                 int64_t block) {
  TORCH_CHECK(q.dim() == 3 && k.dim() == 4 && v.dim() == 4,
              "decode_attention: expected q (B, H, D), k and v (B, H, L, D)");
  return at::empty({q.size(0), q.size(1), v.size(3)}, q.options());
}

}  // namespace

TORCH_LIBRARY(videogpt_fast, m) {
  m.def("decode_attention(Tensor q, Tensor k, Tensor v, Tensor pos, Tensor? layout_row, int block) -> Tensor");
}

TORCH_LIBRARY_IMPL(videogpt_fast, CUDA, m) {
  m.impl("decode_attention", &decode_attention_cuda);
}

TORCH_LIBRARY_IMPL(videogpt_fast, Meta, m) {
  m.impl("decode_attention", &decode_attention_meta);
}

}  // namespace videogpt_fast

// An (empty) Python module, so that ``import videogpt_fast._C`` loads the library and registers
// the ops above under torch.ops.videogpt_fast.
PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "videogpt_fast CUDA ops, registered as torch.ops.videogpt_fast.*";
}
