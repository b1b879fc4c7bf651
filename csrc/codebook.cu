// Nearest codebook entry for each row of x: argmin_k (|x_n|^2 - 2 x_n.e_k) + |e_k|^2, evaluated in
// that order as the PyTorch reference does, ties -> lowest k.
//
// Tiled like a GEMM: a block of 256 threads owns kRows rows of x and walks the codebook in tiles of
// kCodes codes; x and codebook chunks of kDim dims go through shared memory, each thread
// accumulates a 2 x 4 patch of dot products in fp32 and keeps the best (distance, index) of its two
// rows; the 16 threads sharing a row merge their candidates at the end.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <cuda_runtime.h>

#include <cfloat>
#include <cstdint>

namespace videogpt_fast {
namespace {

constexpr int kRows = 32;    // rows of x per block
constexpr int kCodes = 64;   // codes per tile
constexpr int kDim = 32;     // dims per shared-memory chunk
constexpr int kThreads = 256;
constexpr int kRowsPerThread = 2;   // 16 row groups x 2 = 32 rows
constexpr int kCodesPerThread = 4;  // 16 code groups x 4 = 64 codes

__device__ __forceinline__ bool better(float d, int64_t i, float best_d, int64_t best_i) {
  return d < best_d || (d == best_d && i < best_i);
}

template <typename scalar_t>
__global__ void __launch_bounds__(kThreads)
codebook_nearest_kernel(const scalar_t* __restrict__ x, const scalar_t* __restrict__ cb,
                        const float* __restrict__ x_sq, const float* __restrict__ e_sq, int64_t N, int64_t K,
                        int64_t D, int64_t* __restrict__ out) {
  __shared__ float xs[kRows][kDim + 1];
  __shared__ float cs[kCodes][kDim + 1];
  __shared__ float best_d_sm[kRows][16];
  __shared__ int64_t best_i_sm[kRows][16];

  const int t = threadIdx.x;
  const int rg = t / 16;  // row group: rows rg*2, rg*2+1
  const int cg = t % 16;  // code group: codes cg*4 .. cg*4+3 of the tile
  const int64_t row0 = (int64_t)blockIdx.x * kRows;

  float best_d[kRowsPerThread];
  int64_t best_i[kRowsPerThread];
#pragma unroll
  for (int r = 0; r < kRowsPerThread; ++r) {
    best_d[r] = FLT_MAX;
    best_i[r] = K;  // sentinel: any real code wins
  }

  for (int64_t c0 = 0; c0 < K; c0 += kCodes) {
    float dot[kRowsPerThread][kCodesPerThread];
#pragma unroll
    for (int r = 0; r < kRowsPerThread; ++r)
#pragma unroll
      for (int c = 0; c < kCodesPerThread; ++c) dot[r][c] = 0.f;

    for (int64_t d0 = 0; d0 < D; d0 += kDim) {
      for (int i = t; i < kRows * kDim; i += kThreads) {
        const int r = i / kDim, d = i % kDim;
        const int64_t gr = row0 + r, gd = d0 + d;
        xs[r][d] = (gr < N && gd < D) ? static_cast<float>(x[gr * D + gd]) : 0.f;
      }
      for (int i = t; i < kCodes * kDim; i += kThreads) {
        const int c = i / kDim, d = i % kDim;
        const int64_t gc = c0 + c, gd = d0 + d;
        cs[c][d] = (gc < K && gd < D) ? static_cast<float>(cb[gc * D + gd]) : 0.f;
      }
      __syncthreads();
#pragma unroll 8
      for (int d = 0; d < kDim; ++d) {
        float xv[kRowsPerThread], cv[kCodesPerThread];
#pragma unroll
        for (int r = 0; r < kRowsPerThread; ++r) xv[r] = xs[rg * kRowsPerThread + r][d];
#pragma unroll
        for (int c = 0; c < kCodesPerThread; ++c) cv[c] = cs[cg * kCodesPerThread + c][d];
#pragma unroll
        for (int r = 0; r < kRowsPerThread; ++r)
#pragma unroll
          for (int c = 0; c < kCodesPerThread; ++c) dot[r][c] = fmaf(xv[r], cv[c], dot[r][c]);
      }
      __syncthreads();
    }

#pragma unroll
    for (int r = 0; r < kRowsPerThread; ++r) {
      const int64_t gr = row0 + rg * kRowsPerThread + r;
      const float xq = gr < N ? x_sq[gr] : 0.f;
#pragma unroll
      for (int c = 0; c < kCodesPerThread; ++c) {
        const int64_t gc = c0 + cg * kCodesPerThread + c;
        if (gc < K) {
          const float dist = (xq - 2.f * dot[r][c]) + e_sq[gc];
          if (better(dist, gc, best_d[r], best_i[r])) {
            best_d[r] = dist;
            best_i[r] = gc;
          }
        }
      }
    }
  }

#pragma unroll
  for (int r = 0; r < kRowsPerThread; ++r) {
    best_d_sm[rg * kRowsPerThread + r][cg] = best_d[r];
    best_i_sm[rg * kRowsPerThread + r][cg] = best_i[r];
  }
  __syncthreads();
  if (t < kRows && row0 + t < N) {
    float bd = best_d_sm[t][0];
    int64_t bi = best_i_sm[t][0];
    for (int g = 1; g < 16; ++g)
      if (better(best_d_sm[t][g], best_i_sm[t][g], bd, bi)) {
        bd = best_d_sm[t][g];
        bi = best_i_sm[t][g];
      }
    out[row0 + t] = bi < K ? bi : 0;  // only NaN distances leave the sentinel
  }
}

}  // namespace

at::Tensor codebook_nearest_cuda(const at::Tensor& x, const at::Tensor& codebook) {
  TORCH_CHECK(x.is_cuda() && codebook.is_cuda(), "codebook_nearest: x and codebook must be CUDA tensors");
  TORCH_CHECK(x.dim() == 2 && codebook.dim() == 2 && x.size(1) == codebook.size(1),
              "codebook_nearest: expected x (N, D) and codebook (K, D) with equal D, got ", x.sizes(),
              " and ", codebook.sizes());
  TORCH_CHECK(x.get_device() == codebook.get_device(), "codebook_nearest: x and codebook on different devices");
  TORCH_CHECK(codebook.size(0) >= 1, "codebook_nearest: empty codebook");
  c10::cuda::CUDAGuard guard(x.device());
  auto cb = codebook.to(x.scalar_type()).contiguous();
  auto xc = x.contiguous();
  const int64_t N = xc.size(0), K = cb.size(0), D = xc.size(1);
  auto out = at::empty({N}, x.options().dtype(at::kLong));
  if (N == 0) return out;
  // squared norms in fp32, as sums over the dims (the reference's (x ** 2).sum(1))
  auto x_sq = xc.to(at::kFloat).square().sum(1).contiguous();
  auto e_sq = cb.to(at::kFloat).square().sum(1).contiguous();
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  const unsigned blocks = static_cast<unsigned>((N + kRows - 1) / kRows);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, xc.scalar_type(), "codebook_nearest", [&] {
    codebook_nearest_kernel<scalar_t><<<blocks, kThreads, 0, stream>>>(
        xc.data_ptr<scalar_t>(), cb.data_ptr<scalar_t>(), x_sq.data_ptr<float>(), e_sq.data_ptr<float>(), N, K, D,
        out.data_ptr<int64_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

}  // namespace videogpt_fast
