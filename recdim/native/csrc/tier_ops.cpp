// Native CPU kernels of the tier lookup path (see recdim/native/tier_ops.py for the contracts).
//
// tier_scatter:          pooled tier values [S, W] -> the [R, K] output, every bag's values at its columns.
// tier_scatter_backward: the transpose: [R, K] output gradient -> [S, W], zero on padding slots and bags.
// tier_route:            every id's lookup row -> the tier collection's KJT (local rows, bags at a common
//                        stride) and every bag's output row and column-map row, in one counting sort.
//
// Column maps are one flat buffer of signed narrow ints: slot k's bag s reads its w_k columns at
// maps[map_base_k + map_row[k, s] * w_k + j]; c >= 0 is a kept column, c < 0 a padding slot (no value, no
// gradient). Bags whose output row is >= R are padding bags.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#if defined(__SSE2__)
#include <emmintrin.h>
#include <xmmintrin.h>
#endif

namespace {

// Rows ahead whose inputs are prefetched: bags read scattered rows of the pooled values, the gradient and
// per-row column maps, each a cache (and TLB) miss; prefetching overlaps them.
constexpr int64_t kAhead = 12;

inline void prefetch_span(const void* p, int64_t bytes) {
  const char* c = static_cast<const char*>(p);
  for (int64_t off = 0; off < bytes; off += 64) __builtin_prefetch(c + off, 0, 1);
}

// Copies a finished K-float row to dst, with non-temporal stores where the platform has them.
inline void store_row(float* dst, const float* src, int64_t K, bool stream) {
#if defined(__SSE2__)
  if (stream) {
    for (int64_t j = 0; j < K; j += 4) _mm_stream_ps(dst + j, _mm_loadu_ps(src + j));
    return;
  }
#endif
  (void)stream;
  std::memcpy(dst, src, sizeof(float) * K);
}

// Bags per block: a block's rows of the [S, W] pooled values stay in cache across the slots.
constexpr int64_t kBlock = 32;

void check_layout(const at::Tensor& rows, const at::Tensor& map_row, const at::Tensor& slot_column,
                  const at::Tensor& slot_width, const at::Tensor& slot_map_base, const at::Tensor& maps) {
  TORCH_CHECK(rows.dim() == 2 && rows.scalar_type() == at::kLong, "rows must be [T, S] int64");
  TORCH_CHECK(map_row.sizes() == rows.sizes() && map_row.scalar_type() == at::kLong,
              "map_row must be [T, S] int64 like rows");
  const int64_t T = rows.size(0);
  for (const at::Tensor* t : {&slot_column, &slot_width, &slot_map_base}) {
    TORCH_CHECK(t->dim() == 1 && t->size(0) == T && t->scalar_type() == at::kLong, "slot tables must be [T] int64");
  }
  TORCH_CHECK(maps.dim() == 1 && (maps.scalar_type() == at::kChar || maps.scalar_type() == at::kShort),
              "maps must be a flat int8 or int16 tensor");
  TORCH_CHECK(rows.is_contiguous() && map_row.is_contiguous() && maps.is_contiguous(), "inputs must be contiguous");
}

template <typename M>
void scatter_impl(const float* values, int64_t W, const int64_t* rows, const int64_t* map_row, int64_t T, int64_t S,
                  const int64_t* col, const int64_t* width, const int64_t* map_base, const M* maps, float* out,
                  int64_t R, int64_t K, bool accumulate) {
  if (accumulate) {
    // Output rows may receive several bags: one pass, in blocks of bags.
    for (int64_t s0 = 0; s0 < S; s0 += kBlock) {
      const int64_t s1 = std::min(S, s0 + kBlock);
      for (int64_t k = 0; k < T; ++k) {
        const int64_t w = width[k];
        for (int64_t s = s0; s < s1; ++s) {
        const int64_t r = rows[k * S + s];
        if (r < 0 || r >= R) continue;
        const float* src = values + s * W + col[k];
        const M* m = maps + map_base[k] + map_row[k * S + s] * w;
        float* o = out + r * K;
        for (int64_t j = 0; j < w; ++j) {
          const int c = static_cast<int>(m[j]);
          if (c >= 0) o[c] += src[j];
          }
        }
      }
    }
    return;
  }
  // Every output row receives at most one bag: find each row's bag, then write the output in row order, each
  // row once and whole (zeros where no bag or no kept column), so writes stream and each sample's bags are
  // read from nearby rows of the pooled values.
  std::vector<int64_t> bag_of(static_cast<size_t>(R), -1);  // position k * S + s of the row's bag
  std::vector<int32_t> slot_of(static_cast<size_t>(R), 0);   // its slot k (no division per row)
  for (int64_t k = 0; k < T; ++k) {
    for (int64_t s = 0; s < S; ++s) {
      const int64_t r = rows[k * S + s];
      if (r >= 0 && r < R) {
        bag_of[r] = k * S + s;
        slot_of[r] = static_cast<int32_t>(k);
      }
    }
  }
  // Rows are built in a small buffer and streamed out: the output is written once and not read back here.
  const bool stream = K % 4 == 0 && reinterpret_cast<uintptr_t>(out) % 16 == 0;
  at::parallel_for(0, R, 1024, [&](int64_t begin, int64_t end) {
    std::vector<float> row(static_cast<size_t>(K));
    for (int64_t r = begin; r < end; ++r) {
      if (r + kAhead < end) {
        const int64_t ahead = bag_of[r + kAhead];
        if (ahead >= 0) {
          const int64_t k = slot_of[r + kAhead], w = width[k];
          prefetch_span(values + (ahead - k * S) * W + col[k], w * sizeof(float));
          prefetch_span(maps + map_base[k] + map_row[ahead] * w, w * sizeof(M));
        }
      }
      float* o = row.data();
      std::memset(o, 0, sizeof(float) * K);
      const int64_t at = bag_of[r];
      if (at >= 0) {
        const int64_t k = slot_of[r], s = at - k * S, w = width[k];
        const float* src = values + s * W + col[k];
        const M* m = maps + map_base[k] + map_row[at] * w;
        for (int64_t j = 0; j < w; ++j) {
          const int c = static_cast<int>(m[j]);
          if (c >= 0) o[c] = src[j];
        }
      }
      store_row(out + r * K, o, K, stream);
    }
  });
}

template <typename M>
void scatter_backward_impl(const float* grad, int64_t K, const int64_t* rows, const int64_t* map_row, int64_t T,
                           int64_t S, const int64_t* col, const int64_t* width, const int64_t* map_base,
                           const M* maps, float* out, int64_t W, int64_t R) {
  at::parallel_for(0, (S + kBlock - 1) / kBlock, 1, [&](int64_t begin, int64_t end) {
    for (int64_t blk = begin; blk < end; ++blk) {
      const int64_t s0 = blk * kBlock, s1 = std::min(S, s0 + kBlock);
      for (int64_t k = 0; k < T; ++k) {
        const int64_t w = width[k];
        for (int64_t s = s0; s < s1; ++s) {
          // the bag kAhead places later in this block's (slot, bag) order
          int64_t k2 = k, s2 = s + kAhead;
          while (s2 >= s1 && k2 < T) {
            s2 -= s1 - s0;
            ++k2;
          }
          if (k2 < T) {
            const int64_t at2 = k2 * S + s2, ahead = rows[at2];
            if (ahead >= 0 && ahead < R) {
              prefetch_span(grad + ahead * K, K * sizeof(float));
              prefetch_span(maps + map_base[k2] + map_row[at2] * width[k2], width[k2] * sizeof(M));
            }
          }
          float* dst = out + s * W + col[k];
          const int64_t r = rows[k * S + s];
          if (r < 0 || r >= R) {
            std::memset(dst, 0, sizeof(float) * w);
            continue;
          }
          const float* g = grad + r * K;
          const M* m = maps + map_base[k] + map_row[k * S + s] * w;
          for (int64_t j = 0; j < w; ++j) {
            const int c = static_cast<int>(m[j]);
            dst[j] = c >= 0 ? g[c] : 0.0f;
          }
        }
      }
    }
  });
}

at::Tensor tier_scatter(const at::Tensor& values, const at::Tensor& rows, const at::Tensor& map_row,
                        const at::Tensor& slot_column, const at::Tensor& slot_width, const at::Tensor& slot_map_base,
                        const at::Tensor& maps, int64_t num_rows, int64_t embedding_dim, bool accumulate) {
  check_layout(rows, map_row, slot_column, slot_width, slot_map_base, maps);
  TORCH_CHECK(values.dim() == 2 && values.scalar_type() == at::kFloat, "values must be [S, W] float32");
  TORCH_CHECK(values.size(0) == rows.size(1), "values have ", values.size(0), " bags, rows ", rows.size(1));
  const at::Tensor v = values.contiguous();
  at::Tensor out = accumulate ? at::zeros({num_rows, embedding_dim}, v.options())
                              : at::empty({num_rows, embedding_dim}, v.options());
  AT_DISPATCH_SWITCH(maps.scalar_type(), "tier_scatter",
                     AT_DISPATCH_CASE(at::kChar, [&] {
                       scatter_impl<int8_t>(v.data_ptr<float>(), v.size(1), rows.data_ptr<int64_t>(),
                                            map_row.data_ptr<int64_t>(), rows.size(0), rows.size(1),
                                            slot_column.data_ptr<int64_t>(), slot_width.data_ptr<int64_t>(),
                                            slot_map_base.data_ptr<int64_t>(), maps.data_ptr<int8_t>(),
                                            out.data_ptr<float>(), num_rows, embedding_dim, accumulate);
                     }) AT_DISPATCH_CASE(at::kShort, [&] {
                       scatter_impl<int16_t>(v.data_ptr<float>(), v.size(1), rows.data_ptr<int64_t>(),
                                             map_row.data_ptr<int64_t>(), rows.size(0), rows.size(1),
                                             slot_column.data_ptr<int64_t>(), slot_width.data_ptr<int64_t>(),
                                             slot_map_base.data_ptr<int64_t>(), maps.data_ptr<int16_t>(),
                                             out.data_ptr<float>(), num_rows, embedding_dim, accumulate);
                     }));
  return out;
}

at::Tensor tier_scatter_backward(const at::Tensor& grad, const at::Tensor& rows, const at::Tensor& map_row,
                                 const at::Tensor& slot_column, const at::Tensor& slot_width,
                                 const at::Tensor& slot_map_base, const at::Tensor& maps, int64_t total_width) {
  check_layout(rows, map_row, slot_column, slot_width, slot_map_base, maps);
  TORCH_CHECK(grad.dim() == 2 && grad.scalar_type() == at::kFloat, "grad must be [R, K] float32");
  const at::Tensor g = grad.contiguous();
  at::Tensor out = at::empty({rows.size(1), total_width}, g.options());
  AT_DISPATCH_SWITCH(maps.scalar_type(), "tier_scatter_backward",
                     AT_DISPATCH_CASE(at::kChar, [&] {
                       scatter_backward_impl<int8_t>(g.data_ptr<float>(), g.size(1), rows.data_ptr<int64_t>(),
                                                     map_row.data_ptr<int64_t>(), rows.size(0), rows.size(1),
                                                     slot_column.data_ptr<int64_t>(), slot_width.data_ptr<int64_t>(),
                                                     slot_map_base.data_ptr<int64_t>(), maps.data_ptr<int8_t>(),
                                                     out.data_ptr<float>(), total_width, g.size(0));
                     }) AT_DISPATCH_CASE(at::kShort, [&] {
                       scatter_backward_impl<int16_t>(g.data_ptr<float>(), g.size(1), rows.data_ptr<int64_t>(),
                                                      map_row.data_ptr<int64_t>(), rows.size(0), rows.size(1),
                                                      slot_column.data_ptr<int64_t>(), slot_width.data_ptr<int64_t>(),
                                                      slot_map_base.data_ptr<int64_t>(), maps.data_ptr<int16_t>(),
                                                      out.data_ptr<float>(), total_width, g.size(0));
                     }));
  return out;
}


// tier_route: every id's lookup row -> its slot's local row, one counting sort (see tier_router.py).
std::vector<at::Tensor> tier_route(const at::Tensor& rows, const at::Tensor& lengths,
                                   const c10::optional<at::Tensor>& weights, const at::Tensor& boundaries,
                                   const at::Tensor& slot_of, const at::Tensor& pooled, const at::Tensor& map_base,
                                   const at::Tensor& map_stride, int64_t batch_size) {
  TORCH_CHECK(rows.dim() == 1 && rows.scalar_type() == at::kInt && rows.is_contiguous(), "rows must be [n] int32");
  TORCH_CHECK(lengths.dim() == 1 && lengths.is_contiguous(), "lengths must be [F * B]");
  TORCH_CHECK(boundaries.dim() == 2 && boundaries.scalar_type() == at::kInt && boundaries.is_contiguous(),
              "boundaries must be [F, Q + 2] int32");
  const int64_t F = boundaries.size(0), E = boundaries.size(1), Q = E - 2, B = batch_size, n = rows.size(0);
  const int64_t T = pooled.size(0);
  TORCH_CHECK(lengths.size(0) == F * B, "lengths has ", lengths.size(0), " bags, expected F * B = ", F * B);
  TORCH_CHECK(slot_of.scalar_type() == at::kLong && slot_of.numel() == (Q + 1) * F, "slot_of must be [(Q+1)F] int64");
  TORCH_CHECK(pooled.scalar_type() == at::kBool && map_base.scalar_type() == at::kLong &&
                  map_stride.scalar_type() == at::kLong && map_base.numel() == T && map_stride.numel() == T,
              "pooled / map_base / map_stride must be [T] bool / int64 / int64");
  const at::Tensor len64 = lengths.to(at::kLong);
  const int64_t* len = len64.data_ptr<int64_t>();
  const int32_t* row = rows.data_ptr<int32_t>();
  const int32_t* bnd = boundaries.data_ptr<int32_t>();
  const int64_t* sof = slot_of.data_ptr<int64_t>();
  const bool* pool = pooled.data_ptr<bool>();
  const int64_t* mbase = map_base.data_ptr<int64_t>();
  const int64_t* mstride = map_stride.data_ptr<int64_t>();
  const bool weighted = weights.has_value() && weights->defined();
  at::Tensor w_in;
  if (weighted) {
    w_in = weights->to(at::kFloat).contiguous();
    TORCH_CHECK(w_in.numel() == n, "weights must be [n]");
  }

  // Pass 1: every id's slot (-1: dropped) and local row; ids and bags per slot.
  std::vector<int32_t> slot(static_cast<size_t>(n)), local(static_cast<size_t>(n));
  std::vector<int64_t> ids(T, 0), bags(T, 0), last_sample(T, -1);
  int64_t i = 0, longest = 0;
  for (int64_t f = 0; f < F; ++f) {
    const int32_t* b_f = bnd + f * E;
    for (int64_t b = 0; b < B; ++b) {
      const int64_t L = len[f * B + b];
      longest = std::max(longest, L);
      TORCH_CHECK(i + L <= n, "lengths sum past the ", n, " ids");
      for (int64_t l = 0; l < L; ++l, ++i) {
        const int32_t v = row[i];
        // buckets are few: the last q with b_f[q] <= v
        int64_t q = std::upper_bound(b_f, b_f + E, v) - b_f - 1;
        TORCH_CHECK(q >= 0 && q <= Q, "lookup row ", v, " of feature ", f, " is outside its buckets");
        const int64_t k = q == Q ? -1 : sof[q * F + f];
        slot[i] = static_cast<int32_t>(k);
        if (k < 0) continue;
        local[i] = v - b_f[q];
        ++ids[k];
        if (!pool[k]) {
          ++bags[k];
        } else if (last_sample[k] != b) {
          ++bags[k];
          last_sample[k] = b;
        }
      }
    }
  }
  TORCH_CHECK(i == n, "lengths sum to ", i, ", the KJT has ", n, " ids");
  int64_t S = 1;
  for (int64_t k = 0; k < T; ++k) S = std::max(S, bags[k]);
  std::vector<int64_t> offset(T + 1, 0);
  for (int64_t k = 0; k < T; ++k) offset[k + 1] = offset[k] + ids[k];
  const int64_t kept = offset[T];

  // Pass 2: place ids in slot order (KJT order inside a slot) and fill every bag.
  at::Tensor local_out = at::empty({kept}, rows.options());
  at::Tensor w_out = weighted ? at::empty({kept}, w_in.options()) : at::empty({0}, rows.options().dtype(at::kFloat));
  at::Tensor bag_len = at::zeros({T * S}, rows.options());
  at::Tensor out_row = at::full({T * S}, F * B, rows.options().dtype(at::kLong));
  at::Tensor map_row = at::empty({T, S}, rows.options().dtype(at::kLong));
  int32_t* lo = local_out.data_ptr<int32_t>();
  float* wo = weighted ? w_out.data_ptr<float>() : nullptr;
  const float* wi = weighted ? w_in.data_ptr<float>() : nullptr;
  int32_t* bl = bag_len.data_ptr<int32_t>();
  int64_t* orow = out_row.data_ptr<int64_t>();
  int64_t* mrow = map_row.data_ptr<int64_t>();
  for (int64_t k = 0; k < T; ++k) std::fill(mrow + k * S, mrow + (k + 1) * S, mbase[k]);
  std::vector<int64_t> cursor(offset.begin(), offset.end() - 1), bag(T, -1);
  std::fill(last_sample.begin(), last_sample.end(), -1);
  i = 0;
  for (int64_t f = 0; f < F; ++f) {
    for (int64_t b = 0; b < B; ++b) {
      const int64_t L = len[f * B + b];
      for (int64_t l = 0; l < L; ++l, ++i) {
        const int64_t k = slot[i];
        if (k < 0) continue;
        const int64_t pos = cursor[k]++;
        lo[pos] = local[i];
        if (weighted) wo[pos] = wi[i];
        if (!pool[k] || last_sample[k] != b) {
          ++bag[k];
          last_sample[k] = b;
        }
        const int64_t at = k * S + bag[k];
        ++bl[at];
        orow[at] = b * F + f;
        mrow[at] = mbase[k] + mstride[k] * local[i];
      }
    }
  }
  at::Tensor counts = at::empty({T + 2}, rows.options().dtype(at::kLong));
  int64_t* c = counts.data_ptr<int64_t>();
  c[0] = longest;
  c[1] = S;
  for (int64_t k = 0; k < T; ++k) c[k + 2] = ids[k];
  return {local_out, bag_len, w_out, out_row.view({T, S}), map_row, counts};
}

}  // namespace

TORCH_LIBRARY(recdim, m) {
  m.def(
      "tier_scatter(Tensor values, Tensor rows, Tensor map_row, Tensor slot_column, Tensor slot_width, "
      "Tensor slot_map_base, Tensor maps, int num_rows, int embedding_dim, bool accumulate) -> Tensor");
  m.def(
      "tier_scatter_backward(Tensor grad, Tensor rows, Tensor map_row, Tensor slot_column, Tensor slot_width, "
      "Tensor slot_map_base, Tensor maps, int total_width) -> Tensor");
  m.def(
      "tier_route(Tensor rows, Tensor lengths, Tensor? weights, Tensor boundaries, Tensor slot_of, Tensor pooled, "
      "Tensor map_base, Tensor map_stride, int batch_size) -> Tensor[]");
}

TORCH_LIBRARY_IMPL(recdim, CPU, m) {
  m.impl("tier_scatter", &tier_scatter);
  m.impl("tier_scatter_backward", &tier_scatter_backward);
  m.impl("tier_route", &tier_route);
}
