// CUDA k-selection for exact neighbour mining (no torch headers; API in fastep_cuda.h).
//
// One warp per tile row, in the spirit of FAISS's WarpSelect: the row's running near and far
// lists (sorted, best first) live in shared memory; the warp reads the row's distances 32 at a
// time (coalesced), each lane tests its candidate against the current worst entry (a register
// copy of the threshold), a ballot collects the few that pass, and each passing candidate is
// inserted by the whole warp: the insertion position is the number of list entries that beat
// it (ballot + popc over 32-entry chunks), entries behind it shift by one.  After the first
// tiles almost no candidate passes the threshold, so the kernel runs at memory speed.
// Order: near = (distance, index) ascending; far = distance descending then index ascending.
#include <cuda_runtime.h>

#include <cstdint>
#include <cstdio>
#include <string>

#include "fastep_cuda.h"

namespace fastep_cuda {
namespace {

thread_local std::string g_last_error;

constexpr int kMaxK = 4096;            // kn + kf supported
constexpr int kSmemLimit = 48 * 1024;  // default dynamic shared memory without opt-in

template <bool NEAR>
__device__ __forceinline__ bool better(float d, int64_t j, float d2, int64_t j2) {
  if (NEAR) return d < d2 || (d == d2 && j < j2);
  return d > d2 || (d == d2 && j < j2);
}

// Warp-cooperative insertion of (d, j) into the sorted list (D, I) of length k.  All lanes call.
template <bool NEAR>
__device__ __forceinline__ void warp_insert(float* D, int64_t* I, int k, float d, int64_t j,
                                            int lane) {
  // Position = number of entries that beat the candidate (the list is sorted best-first).
  int pos = 0;
  for (int base = 0; base < k; base += 32) {
    int l = base + lane;
    bool beats = l < k && better<NEAR>(D[l], I[l], d, j);
    pos += __popc(__ballot_sync(0xffffffffu, beats));
  }
  // Shift entries [pos, k-2] to [pos+1, k-1], last chunk first.
  for (int base = ((k - 1) / 32) * 32; base >= 0; base -= 32) {
    int l = base + lane;
    bool move = l >= pos && l < k - 1;
    float dv = 0.f;
    int64_t iv = 0;
    if (move) {
      dv = D[l];
      iv = I[l];
    }
    __syncwarp();
    if (move) {
      D[l + 1] = dv;
      I[l + 1] = iv;
    }
    __syncwarp();
  }
  if (lane == 0 && pos < k) {
    D[pos] = d;
    I[pos] = j;
  }
  __syncwarp();
}

template <bool NEAR>
__device__ __forceinline__ void scan_chunk(float* D, int64_t* I, int k, float d, int64_t j,
                                           bool valid, float& worst_d, int64_t& worst_i,
                                           int lane) {
  if (k == 0) return;
  unsigned mask = __ballot_sync(0xffffffffu, valid && better<NEAR>(d, j, worst_d, worst_i));
  while (mask) {
    int src = __ffs(mask) - 1;
    float cd = __shfl_sync(0xffffffffu, d, src);
    int64_t cj = __shfl_sync(0xffffffffu, j, src);
    warp_insert<NEAR>(D, I, k, cd, cj, lane);
    worst_d = D[k - 1];
    worst_i = I[k - 1];
    mask &= ~(1u << src);
    // Later candidates must beat the new (tighter) threshold.
    mask &= __ballot_sync(0xffffffffu, valid && better<NEAR>(d, j, worst_d, worst_i));
  }
}

__global__ void topk_merge_kernel(const float* __restrict__ dist, int64_t R, int64_t C, int64_t ld,
                                  int64_t row_start, int64_t col_start, float* near_d,
                                  int64_t* near_i, int kn, float* far_d, int64_t* far_i, int kf) {
  extern __shared__ unsigned char smem_raw[];
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  const int warps = blockDim.x >> 5;
  const int k = kn + kf;
  // Per warp: k int64 indices, then k floats (8-byte alignment first).
  int64_t* Iw = reinterpret_cast<int64_t*>(smem_raw) + static_cast<int64_t>(warp) * k;
  float* Dw = reinterpret_cast<float*>(reinterpret_cast<int64_t*>(smem_raw) +
                                       static_cast<int64_t>(warps) * k) +
              static_cast<int64_t>(warp) * k;
  int64_t* In = Iw;
  int64_t* If = Iw + kn;
  float* Dn = Dw;
  float* Df = Dw + kn;

  for (int64_t r = static_cast<int64_t>(blockIdx.x) * warps + warp; r < R;
       r += static_cast<int64_t>(gridDim.x) * warps) {
    for (int l = lane; l < kn; l += 32) {
      Dn[l] = near_d[r * kn + l];
      In[l] = near_i[r * kn + l];
    }
    for (int l = lane; l < kf; l += 32) {
      Df[l] = far_d[r * kf + l];
      If[l] = far_i[r * kf + l];
    }
    __syncwarp();
    float wn = kn ? Dn[kn - 1] : 0.f, wf = kf ? Df[kf - 1] : 0.f;
    int64_t wni = kn ? In[kn - 1] : 0, wfi = kf ? If[kf - 1] : 0;
    const int64_t gi = row_start + r;
    const float* row = dist + r * ld;
    for (int64_t c0 = 0; c0 < C; c0 += 32) {
      const int64_t c = c0 + lane;
      const bool inb = c < C;
      const float d = inb ? row[c] : 0.f;
      const int64_t gj = col_start + c;
      const bool valid = inb && gj != gi && !(d != d);  // skip self and NaN
      scan_chunk<true>(Dn, In, kn, d, gj, valid, wn, wni, lane);
      scan_chunk<false>(Df, If, kf, d, gj, valid, wf, wfi, lane);
    }
    __syncwarp();
    for (int l = lane; l < kn; l += 32) {
      near_d[r * kn + l] = Dn[l];
      near_i[r * kn + l] = In[l];
    }
    for (int l = lane; l < kf; l += 32) {
      far_d[r * kf + l] = Df[l];
      far_i[r * kf + l] = If[l];
    }
    __syncwarp();
  }
}

}  // namespace

int topk_merge_max_k() { return kMaxK; }

const char* last_error() { return g_last_error.c_str(); }

int topk_merge_f32(const float* dist, int64_t R, int64_t C, int64_t ld, int64_t row_start,
                   int64_t col_start, float* near_d, int64_t* near_i, int kn, float* far_d,
                   int64_t* far_i, int kf, void* stream) {
  const int k = kn + kf;
  if (k <= 0 || R <= 0 || C <= 0) return 0;
  if (k > kMaxK) {
    g_last_error = "kn + kf = " + std::to_string(k) + " exceeds " + std::to_string(kMaxK);
    return -1;
  }
  const size_t per_warp = static_cast<size_t>(k) * (sizeof(int64_t) + sizeof(float));
  int warps = 8;
  while (warps > 1 && per_warp * warps > static_cast<size_t>(kSmemLimit)) warps /= 2;
  const size_t smem = per_warp * warps;
  if (smem > static_cast<size_t>(kSmemLimit)) {
    cudaError_t e = cudaFuncSetAttribute(topk_merge_kernel,
                                         cudaFuncAttributeMaxDynamicSharedMemorySize,
                                         static_cast<int>(smem));
    if (e != cudaSuccess) {
      g_last_error = std::string("cudaFuncSetAttribute: ") + cudaGetErrorString(e);
      return static_cast<int>(e);
    }
  }
  int64_t blocks = (R + warps - 1) / warps;
  if (blocks > 65535LL * 16) blocks = 65535LL * 16;
  topk_merge_kernel<<<static_cast<unsigned>(blocks), warps * 32, smem,
                      static_cast<cudaStream_t>(stream)>>>(dist, R, C, ld, row_start, col_start,
                                                           near_d, near_i, kn, far_d, far_i, kf);
  cudaError_t e = cudaGetLastError();
  if (e != cudaSuccess) {
    g_last_error = std::string("topk_merge_kernel launch: ") + cudaGetErrorString(e);
    return static_cast<int>(e);
  }
  return 0;
}

}  // namespace fastep_cuda
