// Exact neighbour mining: the selection half of fastep.ops.mining.
//
//   fastep_C::topk_update_(tile, row_sq?, col_sq?, row_start, col_start,
//                          near_d!, near_i!, far_d!, far_i!, transpose, stream) -> ()
//       Merge one tile of the (streamed, never materialised) N x N distance matrix into running,
//       sorted per-row top-k lists of both ends.  With row_sq/col_sq the tile holds dot products
//       of the (centred) vectors and the distance max(|x|^2 + |y|^2 - 2 x.y, 0) is formed here,
//       fused with the selection; without them the tile holds distances already (CUDA path:
//       the Triton GEMM epilogue formed them).  transpose=True updates the rows of the tile's
//       columns instead (the symmetric half of a tile pair, so each tile is computed once).
//       `stream` is the cudaStream_t (torch.cuda.current_stream().cuda_stream) on CUDA, else 0.
//       Order: near = (distance, index) ascending; far = distance descending, ties -> smaller
//       index.  The self pair (global row == global column) is skipped.
//   fastep_C::colsum64(x) -> Tensor[D] float64; fastep_C::center_stats_(x, mu, out!, sq!, q4!)
//       the statistics pass on CPU: column sums, and centring fused with the row norms.
//   fastep_C::pair_sqdist(x, y, i, j) -> Tensor[P] float64
//       sum_k (x[i_p, k] - y[j_p, k])^2 in float64 (exact re-ranking of candidate pairs).
//
// CPU: OpenMP over rows, a bounded insertion-sorted list per row (k is small: one compare
// against the current worst per candidate, a short shift on the rare accepted candidate).
// CUDA: csrc/mining_cuda.cu (warp-per-row selection, no torch headers).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

#ifdef FASTEP_WITH_CUDA
// No CUDA headers here (the toolkit's include folder need not be on the host compiler's path):
// the CUDA stream comes from Python as an integer, the device guard is c10's generic one.
#include <c10/core/DeviceGuard.h>

#include "fastep_cuda.h"
#endif

namespace {

constexpr int64_t kEmpty = std::numeric_limits<int64_t>::max();

template <bool NEAR>
inline bool better(float d, int64_t j, float d2, int64_t j2) {
  if (NEAR) return d < d2 || (d == d2 && j < j2);
  return d > d2 || (d == d2 && j < j2);
}

// Insert (d, j) into the sorted list (best first) of length k if it beats the worst entry.
template <bool NEAR>
inline void insert(float* D, int64_t* I, int64_t k, float d, int64_t j) {
  if (k == 0 || !better<NEAR>(d, j, D[k - 1], I[k - 1])) return;
  int64_t pos = k - 1;
  while (pos > 0 && better<NEAR>(d, j, D[pos - 1], I[pos - 1])) {
    D[pos] = D[pos - 1];
    I[pos] = I[pos - 1];
    --pos;
  }
  D[pos] = d;
  I[pos] = j;
}

void check_lists(const at::Tensor& near_d, const at::Tensor& near_i, const at::Tensor& far_d,
                 const at::Tensor& far_i) {
  TORCH_CHECK(near_d.dim() == 2 && far_d.dim() == 2, "topk_update_: near_d/far_d must be 2-D");
  TORCH_CHECK(near_d.scalar_type() == at::kFloat && far_d.scalar_type() == at::kFloat,
              "topk_update_: near_d/far_d must be float32");
  TORCH_CHECK(near_i.scalar_type() == at::kLong && far_i.scalar_type() == at::kLong,
              "topk_update_: near_i/far_i must be int64");
  TORCH_CHECK(near_i.sizes() == near_d.sizes() && far_i.sizes() == far_d.sizes(),
              "topk_update_: index and distance lists must have the same shape");
  TORCH_CHECK(near_d.size(0) == far_d.size(0), "topk_update_: near and far lists differ in rows");
  TORCH_CHECK(near_d.is_contiguous() && near_i.is_contiguous() && far_d.is_contiguous() &&
                  far_i.is_contiguous(),
              "topk_update_: lists must be contiguous");
}

template <typename scalar_t>
void update_rows_cpu(const scalar_t* tile, int64_t R, int64_t C, const double* rsq,
                     const double* csq, int64_t row_start, int64_t col_start, float* near_d,
                     int64_t* near_i, int64_t kn, float* far_d, int64_t* far_i, int64_t kf) {
  const bool fused = rsq != nullptr;
  const int nthreads = at::get_num_threads();
  // Small tiles run serially: waking a team costs more than the work on a busy machine.
  const bool par = R * C >= (int64_t{1} << 18);
#pragma omp parallel for schedule(dynamic, 8) num_threads(nthreads) if (par)
  for (int64_t r = 0; r < R; ++r) {
    const int64_t gi = row_start + r;
    float* nd = near_d + gi * kn;
    int64_t* ni = near_i + gi * kn;
    float* fd = far_d + gi * kf;
    int64_t* fi = far_i + gi * kf;
    const scalar_t* row = tile + r * C;
    const double rs = fused ? rsq[r] : 0.0;
    float worst_n = kn ? nd[kn - 1] : 0.f;
    int64_t worst_ni = kn ? ni[kn - 1] : 0;
    float worst_f = kf ? fd[kf - 1] : 0.f;
    int64_t worst_fi = kf ? fi[kf - 1] : 0;
    for (int64_t c = 0; c < C; ++c) {
      const int64_t gj = col_start + c;
      float d;
      if (fused) {
        double v = rs + csq[c] - 2.0 * static_cast<double>(row[c]);
        d = static_cast<float>(v > 0.0 ? v : 0.0);
      } else {
        d = static_cast<float>(row[c]);
      }
      if (gj == gi) continue;
      if (kn && better<true>(d, gj, worst_n, worst_ni)) {
        insert<true>(nd, ni, kn, d, gj);
        worst_n = nd[kn - 1];
        worst_ni = ni[kn - 1];
      }
      if (kf && better<false>(d, gj, worst_f, worst_fi)) {
        insert<false>(fd, fi, kf, d, gj);
        worst_f = fd[kf - 1];
        worst_fi = fi[kf - 1];
      }
    }
  }
}

void topk_update_cpu(const at::Tensor& tile_in, const c10::optional<at::Tensor>& row_sq,
                     const c10::optional<at::Tensor>& col_sq, int64_t row_start, int64_t col_start,
                     const at::Tensor& near_d, const at::Tensor& near_i, const at::Tensor& far_d, const at::Tensor& far_i,
                     bool transpose, int64_t /*stream*/) {
  check_lists(near_d, near_i, far_d, far_i);
  TORCH_CHECK(tile_in.dim() == 2, "topk_update_: tile must be 2-D, got ", tile_in.dim(), "-D");
  TORCH_CHECK(tile_in.scalar_type() == at::kFloat || tile_in.scalar_type() == at::kDouble,
              "topk_update_: tile must be float32 or float64");
  TORCH_CHECK(row_sq.has_value() == col_sq.has_value(),
              "topk_update_: give both row_sq and col_sq or neither");
  at::Tensor tile = transpose ? tile_in.t().contiguous() : tile_in.contiguous();
  int64_t rs = row_start, cs = col_start;
  c10::optional<at::Tensor> rsq = row_sq, csq = col_sq;
  if (transpose) {
    std::swap(rs, cs);
    std::swap(rsq, csq);
  }
  const int64_t R = tile.size(0), C = tile.size(1), N = near_d.size(0);
  TORCH_CHECK(rs >= 0 && rs + R <= N, "topk_update_: rows ", rs, "..", rs + R,
              " outside the lists' ", N, " rows");
  at::Tensor r64, c64;
  if (rsq.has_value()) {
    r64 = rsq->to(at::kDouble).contiguous();
    c64 = csq->to(at::kDouble).contiguous();
    TORCH_CHECK(r64.numel() == R && c64.numel() == C,
                "topk_update_: row_sq/col_sq lengths must match the tile");
  }
  AT_DISPATCH_FLOATING_TYPES(tile.scalar_type(), "topk_update_cpu", [&] {
    update_rows_cpu<scalar_t>(tile.data_ptr<scalar_t>(), R, C,
                              rsq.has_value() ? r64.data_ptr<double>() : nullptr,
                              rsq.has_value() ? c64.data_ptr<double>() : nullptr, rs, cs,
                              near_d.data_ptr<float>(), near_i.data_ptr<int64_t>(), near_d.size(1),
                              far_d.data_ptr<float>(), far_i.data_ptr<int64_t>(), far_d.size(1));
  });
}

template <typename scalar_t>
double sqdist_row(const scalar_t* a, const scalar_t* b, int64_t D) {
  // Four interleaved float64 accumulators, fixed order: deterministic for identical inputs.
  double s0 = 0, s1 = 0, s2 = 0, s3 = 0;
  int64_t k = 0;
  for (; k + 4 <= D; k += 4) {
    double d0 = static_cast<double>(a[k]) - static_cast<double>(b[k]);
    double d1 = static_cast<double>(a[k + 1]) - static_cast<double>(b[k + 1]);
    double d2 = static_cast<double>(a[k + 2]) - static_cast<double>(b[k + 2]);
    double d3 = static_cast<double>(a[k + 3]) - static_cast<double>(b[k + 3]);
    s0 += d0 * d0;
    s1 += d1 * d1;
    s2 += d2 * d2;
    s3 += d3 * d3;
  }
  for (; k < D; ++k) {
    double d0 = static_cast<double>(a[k]) - static_cast<double>(b[k]);
    s0 += d0 * d0;
  }
  return (s0 + s1) + (s2 + s3);
}

template <typename scalar_t>
void pair_sqdist_loop(const scalar_t* xp, const scalar_t* yp, const int64_t* ip, const int64_t* jp,
                      double* op, int64_t P, int64_t D) {
  const int nthreads = at::get_num_threads();
  const bool par = P * D >= (int64_t{1} << 20);
#pragma omp parallel for schedule(dynamic, 4) num_threads(nthreads) if (par)
  for (int64_t p = 0; p < P; ++p) {
    op[p] = sqdist_row<scalar_t>(xp + ip[p] * D, yp + jp[p] * D, D);
  }
}

at::Tensor pair_sqdist_cpu(const at::Tensor& x_in, const at::Tensor& y_in, const at::Tensor& i_in,
                           const at::Tensor& j_in) {
  TORCH_CHECK(x_in.dim() == 2 && y_in.dim() == 2, "pair_sqdist: x and y must be 2-D");
  TORCH_CHECK(x_in.size(1) == y_in.size(1), "pair_sqdist: x and y differ in dimension");
  TORCH_CHECK(x_in.scalar_type() == y_in.scalar_type(), "pair_sqdist: x and y differ in dtype");
  TORCH_CHECK(i_in.numel() == j_in.numel(), "pair_sqdist: i and j differ in length");
  at::Tensor x = x_in.contiguous(), y = y_in.contiguous();
  at::Tensor i = i_in.to(at::kLong).contiguous(), j = j_in.to(at::kLong).contiguous();
  const int64_t P = i.numel(), D = x.size(1);
  at::Tensor out = at::empty({P}, x.options().dtype(at::kDouble));
  if (P == 0) return out;
  const int64_t* ip = i.data_ptr<int64_t>();
  const int64_t* jp = j.data_ptr<int64_t>();
  double* op = out.data_ptr<double>();
  const int64_t nx = x.size(0), ny = y.size(0);
  for (int64_t p = 0; p < P; ++p) {
    TORCH_CHECK(ip[p] >= 0 && ip[p] < nx && jp[p] >= 0 && jp[p] < ny,
                "pair_sqdist: pair index out of range at ", p);
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "pair_sqdist", [&] {
    pair_sqdist_loop<scalar_t>(x.data_ptr<scalar_t>(), y.data_ptr<scalar_t>(), ip, jp, op, P, D);
  });
  return out;
}


// ---- statistics pass on CPU: column sums and centring fused with the row norms ----------------
at::Tensor colsum64_cpu(const at::Tensor& x_in) {
  TORCH_CHECK(x_in.dim() == 2 && x_in.scalar_type() == at::kFloat, "colsum64: x must be 2-D float32");
  at::Tensor x = x_in.contiguous();
  const int64_t N = x.size(0), D = x.size(1);
  at::Tensor out = at::zeros({D}, x.options().dtype(at::kDouble));
  const float* xp = x.data_ptr<float>();
  double* op = out.data_ptr<double>();
  const int64_t CB = 1024;
  const int nthreads = at::get_num_threads();
  const bool par = N * D >= (int64_t{1} << 20);
#pragma omp parallel for schedule(static) num_threads(nthreads) if (par)
  for (int64_t c0 = 0; c0 < D; c0 += CB) {
    const int64_t c1 = std::min(D, c0 + CB);
    for (int64_t r = 0; r < N; ++r) {
      const float* row = xp + r * D;
      for (int64_t c = c0; c < c1; ++c) op[c] += static_cast<double>(row[c]);
    }
  }
  return out;
}

// out = fl32(x - mu); sq[r] = sum out^2 and q4[r] = (sum out^4)^(1/4), accumulated in float64.
void center_stats_cpu(const at::Tensor& x_in, const at::Tensor& mu_in, const at::Tensor& out,
                      const at::Tensor& sq, const at::Tensor& q4) {
  TORCH_CHECK(x_in.dim() == 2 && x_in.scalar_type() == at::kFloat, "center_stats_: x must be 2-D float32");
  TORCH_CHECK(out.scalar_type() == at::kFloat && out.is_contiguous() && out.sizes() == x_in.sizes(),
              "center_stats_: out must be a contiguous float32 tensor shaped like x");
  TORCH_CHECK(sq.scalar_type() == at::kDouble && q4.scalar_type() == at::kDouble &&
                  sq.is_contiguous() && q4.is_contiguous() && sq.numel() == x_in.size(0) &&
                  q4.numel() == x_in.size(0),
              "center_stats_: sq and q4 must be contiguous float64 of length N");
  at::Tensor x = x_in.contiguous(), mu = mu_in.to(at::kFloat).contiguous();
  const int64_t N = x.size(0), D = x.size(1);
  TORCH_CHECK(mu.numel() == D, "center_stats_: mu must have D elements");
  const float* xp = x.data_ptr<float>();
  const float* mp = mu.data_ptr<float>();
  float* op = out.data_ptr<float>();
  double* sp = sq.data_ptr<double>();
  double* qp = q4.data_ptr<double>();
  const int nthreads = at::get_num_threads();
  const bool par = N * D >= (int64_t{1} << 20);
#pragma omp parallel for schedule(dynamic, 1) num_threads(nthreads) if (par)
  for (int64_t r = 0; r < N; ++r) {
    const float* row = xp + r * D;
    float* orow = op + r * D;
    // kLanes independent float64 accumulators: the sums are not one serial dependency chain
    // (the loop runs at memory speed, and the compiler may vectorise across lanes).
    constexpr int kLanes = 8;
    double s2[kLanes] = {0}, s4[kLanes] = {0};
    int64_t c = 0;
    for (; c + kLanes <= D; c += kLanes) {
      for (int l = 0; l < kLanes; ++l) {
        const float v = row[c + l] - mp[c + l];
        orow[c + l] = v;
        const double d = static_cast<double>(v) * v;
        s2[l] += d;
        s4[l] += d * d;
      }
    }
    for (int l = 0; c < D; ++c, ++l) {
      const float v = row[c] - mp[c];
      orow[c] = v;
      const double d = static_cast<double>(v) * v;
      s2[l] += d;
      s4[l] += d * d;
    }
    double t2 = 0, t4 = 0;
    for (int l = 0; l < kLanes; ++l) {
      t2 += s2[l];
      t4 += s4[l];
    }
    sp[r] = t2;
    qp[r] = std::sqrt(std::sqrt(t4));
  }
}

#ifdef FASTEP_WITH_CUDA
void topk_update_cuda(const at::Tensor& tile_in, const c10::optional<at::Tensor>& row_sq,
                      const c10::optional<at::Tensor>& col_sq, int64_t row_start,
                      int64_t col_start, const at::Tensor& near_d, const at::Tensor& near_i, const at::Tensor& far_d,
                      const at::Tensor& far_i, bool transpose, int64_t stream) {
  check_lists(near_d, near_i, far_d, far_i);
  TORCH_CHECK(tile_in.dim() == 2, "topk_update_: tile must be 2-D");
  at::Tensor tile = transpose ? tile_in.t() : tile_in;
  int64_t rs = row_start, cs = col_start;
  c10::optional<at::Tensor> rsq = row_sq, csq = col_sq;
  if (transpose) {
    std::swap(rs, cs);
    std::swap(rsq, csq);
  }
  if (rsq.has_value()) {  // dot products: form the distances (the Triton path fuses this)
    tile = (rsq->to(at::kDouble).unsqueeze(1) + csq->to(at::kDouble).unsqueeze(0) -
            2.0 * tile.to(at::kDouble))
               .clamp_min(0.0);
  }
  tile = tile.to(at::kFloat).contiguous();
  const int64_t R = tile.size(0), C = tile.size(1), N = near_d.size(0);
  TORCH_CHECK(rs >= 0 && rs + R <= N, "topk_update_: rows outside the lists");
  const int kn = static_cast<int>(near_d.size(1)), kf = static_cast<int>(far_d.size(1));
  TORCH_CHECK(kn + kf <= fastep_cuda::topk_merge_max_k(), "topk_update_: kn + kf = ", kn + kf,
              " exceeds the CUDA kernel's limit ", fastep_cuda::topk_merge_max_k());
  c10::DeviceGuard guard(tile.device());
  if (R == 0 || C == 0) return;
  int err = fastep_cuda::topk_merge_f32(
      tile.data_ptr<float>(), R, C, C, rs, cs, near_d.data_ptr<float>() + rs * kn,
      near_i.data_ptr<int64_t>() + rs * kn, kn, far_d.data_ptr<float>() + rs * kf,
      far_i.data_ptr<int64_t>() + rs * kf, kf, reinterpret_cast<void*>(stream));
  TORCH_CHECK(err == 0, "topk_update_ (CUDA): ", fastep_cuda::last_error());
}
#endif

}  // namespace

TORCH_LIBRARY_FRAGMENT(fastep_C, m) {
  m.def(
      "topk_update_(Tensor tile, Tensor? row_sq, Tensor? col_sq, int row_start, int col_start, "
      "Tensor(a!) near_d, Tensor(b!) near_i, Tensor(c!) far_d, Tensor(d!) far_i, "
      "bool transpose=False, int stream=0) -> ()");
  m.def("pair_sqdist(Tensor x, Tensor y, Tensor i, Tensor j) -> Tensor");
  m.def("colsum64(Tensor x) -> Tensor");
  m.def("center_stats_(Tensor x, Tensor mu, Tensor(a!) out, Tensor(b!) sq, Tensor(c!) q4) -> ()");
}

TORCH_LIBRARY_IMPL(fastep_C, CPU, m) {
  m.impl("topk_update_", &topk_update_cpu);
  m.impl("pair_sqdist", &pair_sqdist_cpu);
  m.impl("colsum64", &colsum64_cpu);
  m.impl("center_stats_", &center_stats_cpu);
}

#ifdef FASTEP_WITH_CUDA
TORCH_LIBRARY_IMPL(fastep_C, CUDA, m) { m.impl("topk_update_", &topk_update_cuda); }
#endif
