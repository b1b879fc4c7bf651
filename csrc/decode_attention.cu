// Split-K single-query attention over a KV cache ("flash-decoding") for VideoGPT sampling.
//
// q (B, H, D), k/v (B, H, L, D) contiguous, pos: one-element int64 device tensor. Key j is visible
// iff j <= pos and (no layout_row, or layout_row[h, j / block] != 0). Output (B, H, D) in q's dtype;
// NaN when pos is outside [0, L).
//
// Pass 1, grid (B*H, S): split s handles keys [s*chunk, min((s+1)*chunk, pos+1)). Each of its warps
// takes groups of kKeysPerIter keys (loads them all before the shuffle reductions, for memory-level
// parallelism), keeps an online softmax (running max m, sum l, per-lane accumulator of its D/32
// elements) in fp32, and the warps are merged in shared memory into a partial (m, l, out[D]).
// Pass 2, grid (B*H): the S partials are merged with the usual rescaling by exp(m_s - M).
// pos lives on the device, S depends only on L: the launch is the same at every step, so a CUDA
// graph replays it; splits past pos exit at once.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstdint>

namespace videogpt_fast {
namespace {

constexpr int kWarps = 8;
constexpr int kThreads = kWarps * 32;
constexpr int kKeysPerIter = 4;
constexpr int kMaxHeadDim = 256;
constexpr float kEmpty = -FLT_MAX;  // running max of a range with no visible key

__device__ __forceinline__ float warp_sum(float x) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) x += __shfl_xor_sync(0xffffffffu, x, offset);
  return x;
}

template <typename scalar_t, int E>
__global__ void __launch_bounds__(kThreads)
decode_attention_split_kernel(const scalar_t* __restrict__ q, const scalar_t* __restrict__ k,
                              const scalar_t* __restrict__ v, const int64_t* __restrict__ pos_ptr,
                              const uint8_t* __restrict__ layout_row, int H, int L, int D, int block,
                              int nb, int chunk, float scale, float* __restrict__ part_out,
                              float* __restrict__ part_ml) {
  const int bh = blockIdx.x;
  const int split = blockIdx.y;
  const int S = gridDim.y;
  const int h = bh % H;
  const int warp = threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  const int64_t pos = *pos_ptr;
  const int start = split * chunk;
  const int64_t stop64 = pos + 1 < (int64_t)L ? pos + 1 : (int64_t)L;
  const int end = min(start + chunk, (int)(stop64 < 0 ? 0 : stop64));

  const scalar_t* qp = q + (int64_t)bh * D;
  const scalar_t* kp = k + (int64_t)bh * L * D;
  const scalar_t* vp = v + (int64_t)bh * L * D;
  const uint8_t* lrow = layout_row == nullptr ? nullptr : layout_row + (int64_t)h * nb;

  float qr[E];
  float acc[E];
#pragma unroll
  for (int e = 0; e < E; ++e) {
    const int d = lane + 32 * e;
    qr[e] = d < D ? static_cast<float>(qp[d]) * scale : 0.f;
    acc[e] = 0.f;
  }
  float m = kEmpty;
  float l = 0.f;

  for (int j0 = start + warp * kKeysPerIter; j0 < end; j0 += kWarps * kKeysPerIter) {
    float s[kKeysPerIter];
    bool ok[kKeysPerIter];
#pragma unroll
    for (int u = 0; u < kKeysPerIter; ++u) {
      const int j = j0 + u;
      ok[u] = j < end && (lrow == nullptr || lrow[j / block] != 0);  // uniform across the warp
      float part = 0.f;
      if (ok[u]) {
        const scalar_t* kr = kp + (int64_t)j * D;
#pragma unroll
        for (int e = 0; e < E; ++e) {
          const int d = lane + 32 * e;
          if (d < D) part += qr[e] * static_cast<float>(kr[d]);
        }
      }
      s[u] = part;
    }
#pragma unroll
    for (int u = 0; u < kKeysPerIter; ++u) s[u] = warp_sum(s[u]);

    float m_new = m;
#pragma unroll
    for (int u = 0; u < kKeysPerIter; ++u)
      if (ok[u]) m_new = fmaxf(m_new, s[u]);
    if (m_new == kEmpty) continue;  // nothing visible in this group
    const float corr = m == kEmpty ? 0.f : __expf(m - m_new);
    l *= corr;
#pragma unroll
    for (int e = 0; e < E; ++e) acc[e] *= corr;
#pragma unroll
    for (int u = 0; u < kKeysPerIter; ++u) {
      if (!ok[u]) continue;
      const float p = __expf(s[u] - m_new);
      l += p;
      const scalar_t* vr = vp + (int64_t)(j0 + u) * D;
#pragma unroll
      for (int e = 0; e < E; ++e) {
        const int d = lane + 32 * e;
        if (d < D) acc[e] += p * static_cast<float>(vr[d]);
      }
    }
    m = m_new;
  }

  // merge the warps of this split
  __shared__ float sm_m[kWarps];
  __shared__ float sm_l[kWarps];
  __shared__ float sm_acc[kWarps][E * 32];
  if (lane == 0) {
    sm_m[warp] = m;
    sm_l[warp] = l;
  }
#pragma unroll
  for (int e = 0; e < E; ++e) sm_acc[warp][lane + 32 * e] = acc[e];
  __syncthreads();

  float M = kEmpty;
#pragma unroll
  for (int w = 0; w < kWarps; ++w) M = fmaxf(M, sm_m[w]);
  float scale_w[kWarps];
  float lsum = 0.f;
#pragma unroll
  for (int w = 0; w < kWarps; ++w) {
    scale_w[w] = sm_m[w] == kEmpty ? 0.f : __expf(sm_m[w] - M);
    lsum += sm_l[w] * scale_w[w];
  }
  const int64_t slot = (int64_t)bh * S + split;
  for (int d = threadIdx.x; d < D; d += kThreads) {
    float o = 0.f;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) o += sm_acc[w][d] * scale_w[w];
    part_out[slot * D + d] = o;
  }
  if (threadIdx.x == 0) {
    part_ml[slot * 2] = M;
    part_ml[slot * 2 + 1] = lsum;
  }
}

template <typename scalar_t>
__global__ void decode_attention_reduce_kernel(const float* __restrict__ part_out,
                                               const float* __restrict__ part_ml, int S, int D,
                                               const int64_t* __restrict__ pos_ptr, int L,
                                               scalar_t* __restrict__ out) {
  const int bh = blockIdx.x;
  const int64_t pos = *pos_ptr;
  if (pos < 0 || pos >= L) {  // out of range (not checkable on the host without a sync): NaN
    for (int d = threadIdx.x; d < D; d += blockDim.x) out[(int64_t)bh * D + d] = static_cast<scalar_t>(NAN);
    return;
  }
  const float* ml = part_ml + (int64_t)bh * S * 2;
  float M = kEmpty;
  for (int s = 0; s < S; ++s) M = fmaxf(M, ml[2 * s]);
  float lsum = 0.f;
  for (int s = 0; s < S; ++s)
    if (ml[2 * s] != kEmpty) lsum += ml[2 * s + 1] * __expf(ml[2 * s] - M);
  const float inv = lsum > 0.f ? 1.f / lsum : 0.f;  // no visible key -> zeros
  for (int d = threadIdx.x; d < D; d += blockDim.x) {
    float o = 0.f;
    for (int s = 0; s < S; ++s)
      if (ml[2 * s] != kEmpty) o += part_out[((int64_t)bh * S + s) * D + d] * __expf(ml[2 * s] - M);
    out[(int64_t)bh * D + d] = static_cast<scalar_t>(o * inv);
  }
}

template <typename scalar_t, int E>
void launch_split(dim3 grid, cudaStream_t stream, const at::Tensor& q, const at::Tensor& k,
                  const at::Tensor& v, const at::Tensor& pos, const uint8_t* lrow, int H, int L, int D,
                  int block, int nb, int chunk, float scale, at::Tensor& part_out, at::Tensor& part_ml) {
  decode_attention_split_kernel<scalar_t, E><<<grid, kThreads, 0, stream>>>(
      q.data_ptr<scalar_t>(), k.data_ptr<scalar_t>(), v.data_ptr<scalar_t>(), pos.data_ptr<int64_t>(), lrow,
      H, L, D, block, nb, chunk, scale, part_out.data_ptr<float>(), part_ml.data_ptr<float>());
}

// E = ceil(D / 32) elements per lane, a compile-time constant so the accumulators stay in registers.
template <typename scalar_t>
void launch_split_for_head_dim(int E, dim3 grid, cudaStream_t stream, const at::Tensor& q, const at::Tensor& k,
                               const at::Tensor& v, const at::Tensor& pos, const uint8_t* lrow, int H, int L,
                               int D, int block, int nb, int chunk, float scale, at::Tensor& part_out,
                               at::Tensor& part_ml) {
#define VGF_LAUNCH(NE)                                                                                \
  case NE:                                                                                            \
    launch_split<scalar_t, NE>(grid, stream, q, k, v, pos, lrow, H, L, D, block, nb, chunk, scale, part_out, \
                               part_ml);                                                              \
    return;
  switch (E) {
    VGF_LAUNCH(1) VGF_LAUNCH(2) VGF_LAUNCH(3) VGF_LAUNCH(4)
    VGF_LAUNCH(5) VGF_LAUNCH(6) VGF_LAUNCH(7) VGF_LAUNCH(8)
    default: TORCH_CHECK(false, "decode_attention: unsupported head dim ", D);
  }
#undef VGF_LAUNCH
}

}  // namespace

at::Tensor decode_attention_cuda(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                 const at::Tensor& pos, const c10::optional<at::Tensor>& layout_row,
                                 int64_t block) {
  TORCH_CHECK(q.is_cuda() && k.is_cuda() && v.is_cuda() && pos.is_cuda(),
              "decode_attention: q, k, v and pos must be CUDA tensors");
  TORCH_CHECK(q.dim() == 3 && k.dim() == 4 && v.dim() == 4,
              "decode_attention: expected q (B, H, D), k and v (B, H, L, D), got q.dim()=", q.dim(),
              ", k.dim()=", k.dim(), ", v.dim()=", v.dim());
  TORCH_CHECK(k.sizes() == v.sizes(), "decode_attention: k and v must have the same shape (B, H, L, D)");
  TORCH_CHECK(q.size(0) == k.size(0) && q.size(1) == k.size(1) && q.size(2) == k.size(3),
              "decode_attention: q (B, H, D) does not match k (B, H, L, D)");
  TORCH_CHECK(q.scalar_type() == k.scalar_type() && k.scalar_type() == v.scalar_type(),
              "decode_attention: q, k, v must share a dtype");
  TORCH_CHECK(k.is_contiguous() && v.is_contiguous(), "decode_attention: k and v caches must be contiguous");
  TORCH_CHECK(pos.numel() == 1 && pos.scalar_type() == at::kLong, "decode_attention: pos must be a one-element int64 tensor");
  TORCH_CHECK(q.get_device() == k.get_device() && k.get_device() == v.get_device() && v.get_device() == pos.get_device(),
              "decode_attention: q, k, v, pos must be on one device");
  const int64_t B = q.size(0), H = q.size(1), L = k.size(2), D = q.size(2);
  TORCH_CHECK(D >= 1 && D <= kMaxHeadDim, "decode_attention: head dim must be in [1, ", kMaxHeadDim, "], got ", D);
  TORCH_CHECK(L >= 1, "decode_attention: empty cache");

  const uint8_t* lrow = nullptr;
  int64_t nb = 0;
  at::Tensor lr;
  if (layout_row.has_value() && layout_row->defined()) {
    TORCH_CHECK(block > 0 && L % block == 0, "decode_attention: cache length ", L,
                " is not divisible by block ", block);
    nb = L / block;
    lr = *layout_row;
    TORCH_CHECK(lr.is_cuda() && lr.get_device() == q.get_device(), "decode_attention: layout_row must be on q's device");
    TORCH_CHECK(lr.dim() == 2 && lr.size(0) == H && lr.size(1) == nb,
                "decode_attention: layout_row must be (heads, L/block) = (", H, ", ", nb, ")");
    TORCH_CHECK(lr.scalar_type() == at::kBool || lr.scalar_type() == at::kByte,
                "decode_attention: layout_row must be bool or uint8");
    lr = lr.contiguous();
    lrow = reinterpret_cast<const uint8_t*>(lr.data_ptr());
  } else {
    block = 1;
  }

  c10::cuda::CUDAGuard guard(q.device());
  auto qc = q.contiguous();
  auto out = at::empty({B, H, D}, q.options());
  if (B * H == 0) return out;

  const int sms = at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
  const int64_t BH = B * H;
  const int64_t max_splits = (L + 127) / 128;
  int64_t splits = (4 * sms + BH - 1) / BH;
  splits = std::max<int64_t>(1, std::min<int64_t>(splits, max_splits));
  const int64_t chunk = (L + splits - 1) / splits;
  splits = (L + chunk - 1) / chunk;

  auto fopts = q.options().dtype(at::kFloat);
  auto part_out = at::empty({BH, splits, D}, fopts);
  auto part_ml = at::empty({BH, splits, 2}, fopts);
  const float scale = 1.0f / std::sqrt(static_cast<float>(D));
  const int E = static_cast<int>((D + 31) / 32);
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  const dim3 grid(static_cast<unsigned>(BH), static_cast<unsigned>(splits));

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, q.scalar_type(), "decode_attention", [&] {
    launch_split_for_head_dim<scalar_t>(E, grid, stream, qc, k, v, pos, lrow, (int)H, (int)L, (int)D, (int)block,
                                        (int)nb, (int)chunk, scale, part_out, part_ml);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    decode_attention_reduce_kernel<scalar_t><<<static_cast<unsigned>(BH), 128, 0, stream>>>(
        part_out.data_ptr<float>(), part_ml.data_ptr<float>(), (int)splits, (int)D, pos.data_ptr<int64_t>(), (int)L,
        out.data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

}  // namespace videogpt_fast
