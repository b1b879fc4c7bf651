// videogpt_fast._C: torch.library custom ops for fast VideoGPT sampling.
//
//   videogpt_fast::decode_attention(Tensor q, Tensor k, Tensor v, Tensor pos, Tensor? layout_row,
//                                   int block) -> Tensor
//       One query per (batch, head) over a KV cache: q (B, H, D), k/v (B, H, L, D), pos a one-element
//       int64 device tensor; key j is visible iff j <= pos and (no layout_row or
//       layout_row[h, j / block] != 0). Split-K "flash-decoding", fp32 accumulation, D <= 256.
//   videogpt_fast::codebook_nearest(Tensor x, Tensor codebook) -> Tensor
//       argmin_k |x_n|^2 - 2 x_n.e_k + |e_k|^2 (ties -> lowest k), int64 (N,).
//
// CUDA kernels live in decode_attention.cu and codebook.cu; Meta kernels here let torch.compile and
// FakeTensor tracing see the output shapes. Being real custom ops, both are captured by CUDA graphs.
#include <torch/extension.h>
#include <torch/library.h>

namespace videogpt_fast {

at::Tensor decode_attention_cuda(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                 const at::Tensor& pos, const c10::optional<at::Tensor>& layout_row,
                                 int64_t block);
at::Tensor codebook_nearest_cuda(const at::Tensor& x, const at::Tensor& codebook);

namespace {

at::Tensor decode_attention_meta(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                 const at::Tensor& pos, const c10::optional<at::Tensor>& layout_row,
                                 int64_t block) {
  TORCH_CHECK(q.dim() == 3 && k.dim() == 4 && v.dim() == 4,
              "decode_attention: expected q (B, H, D), k and v (B, H, L, D)");
  return at::empty({q.size(0), q.size(1), v.size(3)}, q.options());
}

at::Tensor codebook_nearest_meta(const at::Tensor& x, const at::Tensor& codebook) {
  TORCH_CHECK(x.dim() == 2 && codebook.dim() == 2 && x.size(1) == codebook.size(1),
              "codebook_nearest: expected x (N, D) and codebook (K, D) with equal D");
  return at::empty({x.size(0)}, x.options().dtype(at::kLong));
}

}  // namespace

TORCH_LIBRARY(videogpt_fast, m) {
  m.def("decode_attention(Tensor q, Tensor k, Tensor v, Tensor pos, Tensor? layout_row, int block) -> Tensor");
  m.def("codebook_nearest(Tensor x, Tensor codebook) -> Tensor");
}

TORCH_LIBRARY_IMPL(videogpt_fast, CUDA, m) {
  m.impl("decode_attention", &decode_attention_cuda);
  m.impl("codebook_nearest", &codebook_nearest_cuda);
}

TORCH_LIBRARY_IMPL(videogpt_fast, Meta, m) {
  m.impl("decode_attention", &decode_attention_meta);
  m.impl("codebook_nearest", &codebook_nearest_meta);
}

}  // namespace videogpt_fast

// An (empty) Python module, so that ``import videogpt_fast._C`` loads the library and registers
// the ops above under torch.ops.videogpt_fast.
PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "videogpt_fast CUDA ops, registered as torch.ops.videogpt_fast.*";
}
