// Plain C++ API of fastep's CUDA kernels (csrc/*.cu).  The .cu files include no torch headers;
// the .cpp op wrappers (compiled with torch) call these functions under #ifdef FASTEP_WITH_CUDA.
// Pointers are device pointers; `stream` is a cudaStream_t passed as void*.
// Functions return 0 on success, or a CUDA error code / negative fastep code; the message of the
// last failure is fastep_cuda::last_error().
#pragma once
#include <cstdint>

namespace fastep_cuda {

// Merge a tile of squared distances dist[R, C] (row stride ld, float32) into running, sorted
// top-k lists of rows row_start .. row_start+R-1 (lists are [*, kn] / [*, kf], row-major, already
// offset to row_start by the caller):
//   near: the kn smallest (dist, index) pairs, lexicographic (ties -> smaller index first);
//   far:  the kf largest distances, ties -> smaller index first.
// Column c has global index col_start + c; the pair with global index == row index is skipped.
// Empty slots hold +inf/-inf and index INT64_MAX.  kn or kf may be 0 (that end is skipped).
int topk_merge_f32(const float* dist, int64_t R, int64_t C, int64_t ld, int64_t row_start,
                   int64_t col_start, float* near_d, int64_t* near_i, int kn, float* far_d,
                   int64_t* far_i, int kf, void* stream);

// Largest kn + kf the merge kernel supports (shared-memory lists); beyond it callers fall back.
int topk_merge_max_k();

const char* last_error();

}  // namespace fastep_cuda
