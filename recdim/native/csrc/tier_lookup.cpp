// tier_lookup: the whole no-grad tier lookup in one pass over local tier tables (see recdim/modules/tiered.py).
//
// Every id is remapped to its lookup row (dense remap: one read of the concatenated int32 table; run remap:
// a binary search in its feature's runs), the row goes to its slot's local row (the buckets of tier_route),
// and its tier row is read
// straight from the slot's table into its (sample, feature) row of the [B * F, K] output at the columns of its
// column map: no routed KJT, no pooled [S, W] intermediate, no second pass over the values. Bags of several ids
// are summed (and averaged for mean pooling) in the output row. Output rows are built in order, each once and
// whole, while the tier rows and column maps of the bags a few rows ahead are prefetched.
//
// Column maps are the scatter's flat buffer: slot k's row r reads maps[slot_map_base_k + (map_base_k +
// map_stride_k * r) * w_k + j]; c >= 0 is a kept column, c < 0 a padding slot (its value is not read).

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

namespace recdim_native {

// Slots whose rows share one map that is the identity prefix [0, w): their values are added as contiguous runs.
template <typename M>
std::vector<char> identity_slots(int64_t T, const std::vector<int64_t>& width, const int64_t* map_base,
                                 const int64_t* map_stride, const int64_t* slot_map_base, const M* maps) {
  std::vector<char> out(static_cast<size_t>(T), 0);
  for (int64_t k = 0; k < T; ++k) {
    if (map_stride[k] != 0) continue;
    const M* m = maps + slot_map_base[k] + map_base[k] * width[k];
    bool same = true;
    for (int64_t j = 0; j < width[k] && same; ++j) same = static_cast<int64_t>(m[j]) == j;
    out[k] = same;
  }
  return out;
}

template std::vector<char> identity_slots<int8_t>(int64_t, const std::vector<int64_t>&, const int64_t*,
                                                  const int64_t*, const int64_t*, const int8_t*);
template std::vector<char> identity_slots<int16_t>(int64_t, const std::vector<int64_t>&, const int64_t*,
                                                   const int64_t*, const int64_t*, const int16_t*);

}  // namespace recdim_native

namespace {

using recdim_native::identity_slots;

// Ids ahead (in output order) whose tier rows and maps are prefetched.
constexpr int64_t kLookAhead = 16;
// Ids ahead (in KJT order) whose remap entries are prefetched.
constexpr int64_t kRemapAhead = 16;

inline void prefetch_bytes(const void* p, int64_t bytes) {
  const char* c = static_cast<const char*>(p);
  for (int64_t off = 0; off < bytes; off += 64) __builtin_prefetch(c + off, 0, 1);
}

// One id as the lookup reads it: its tier row and map row (nullptr: dropped), its width (negative: the map is
// the identity prefix [0, w), as for frequency blocks) and weight.
template <typename M>
struct IdRef {
  const float* values;
  const M* map;
  int32_t width;
  float weight;
};

// One feature's remap: kind (1: runs, 0: dense), id offset, ids, first and end run, and the offset of its
// block directory: the run holding the first id of every block of kRunBlock ids, then its last run
// (TierRemap.features / run_directory).
constexpr int64_t kFeatureFields = 6;
constexpr int64_t kRunBlockShift = 4;  // TierRemap's RUN_BLOCK = 16

// offsets: [F * B + 1] id offsets of the KJT's bags (feature-major); out_offsets: [B * F + 1] the same bags'
// id offsets in output row order (r = b * F + f), where the ids are laid out for pass 2.
template <typename I, typename M>
void lookup_impl(const I* ids, const int64_t* offsets, const int64_t* out_offsets, const float* weights,
                 const int64_t* feat, const int32_t* dense, const int64_t* run_starts, const int64_t* run_deltas,
                 const int64_t* run_directory, const int32_t* bnd, int64_t E, const int64_t* slot_of,
                 const std::vector<const float*>& table, const std::vector<int64_t>& row_stride,
                 const std::vector<int64_t>& width, const int64_t* map_base, const int64_t* map_stride,
                 const int64_t* slot_map_base, const M* maps, int64_t F, int64_t B, int64_t K, bool mean,
                 float* out, const int64_t* row_offset, int32_t* keys, float* key_weights) {
  const int64_t Q = E - 2, n = offsets[F * B];
  const std::vector<char> identity = identity_slots(static_cast<int64_t>(width.size()), width, map_base, map_stride,
                                                    slot_map_base, maps);
  // Reused across calls (per calling thread): a fresh buffer would be zeroed and page-faulted every batch.
  static thread_local std::vector<IdRef<M>> ref;
  if (ref.size() < static_cast<size_t>(n)) ref.resize(static_cast<size_t>(n));
  // Pass 1, in KJT order (feature after feature): remap every id and find its slot and local row, kept as
  // pointers at the id's place in output order; no table memory is touched.
  at::parallel_for(0, F, 1, [&](int64_t f0, int64_t f1) {
    for (int64_t f = f0; f < f1; ++f) {
      const int64_t* fe = feat + f * kFeatureFields;
      const bool runs = fe[0] != 0;
      const int64_t id_offset = fe[1], num_ids = fe[2];
      const int64_t* dir = run_directory + fe[5];
      const int32_t* b_f = bnd + f * E;
      const int64_t end_f = offsets[(f + 1) * B];
      for (int64_t b = 0; b < B; ++b) {
        const int64_t i0 = offsets[f * B + b], i1 = offsets[f * B + b + 1];
        IdRef<M>* dst = ref.data() + out_offsets[b * F + f] - i0;
        int32_t* key_dst = keys != nullptr ? keys + out_offsets[b * F + f] - i0 : nullptr;
        float* weight_dst = key_weights != nullptr ? key_weights + out_offsets[b * F + f] - i0 : nullptr;
        for (int64_t i = i0; i < i1; ++i) {
          const int64_t id = static_cast<int64_t>(ids[i]);
          TORCH_CHECK(id >= 0 && id < num_ids, "id ", id, " of feature ", f, " (value ", i, ") is outside [0, ",
                      num_ids, ")");
          const int64_t key = id + id_offset;
          int32_t v;
          // Remap reads a few ids ahead are prefetched: dense entries; for runs, the block directory entry
          // 2 * kRemapAhead ids ahead, then the runs (starts, deltas) it points to kRemapAhead ids ahead.
          if (runs) {
            if (i + 2 * kRemapAhead < end_f) {
              const int64_t ahead = static_cast<int64_t>(ids[i + 2 * kRemapAhead]);
              if (ahead >= 0 && ahead < num_ids) __builtin_prefetch(dir + (ahead >> kRunBlockShift), 0, 1);
            }
            if (i + kRemapAhead < end_f) {
              const int64_t ahead = static_cast<int64_t>(ids[i + kRemapAhead]);
              if (ahead >= 0 && ahead < num_ids) {
                const int64_t lo = dir[ahead >> kRunBlockShift], hi = dir[(ahead >> kRunBlockShift) + 1];
                __builtin_prefetch(run_starts + lo, 0, 1);
                __builtin_prefetch(run_deltas + lo, 0, 1);
                if (hi - lo >= 8) {
                  __builtin_prefetch(run_starts + hi, 0, 1);
                  __builtin_prefetch(run_deltas + hi, 0, 1);
                }
              }
            }
            const int64_t blk = id >> kRunBlockShift;
            const int64_t* at = std::upper_bound(run_starts + dir[blk], run_starts + dir[blk + 1] + 1, key) - 1;
            v = static_cast<int32_t>(key + run_deltas[at - run_starts]);
          } else {
            if (i + kRemapAhead < end_f) {
              const int64_t ahead = static_cast<int64_t>(ids[i + kRemapAhead]);
              if (ahead >= 0 && ahead < num_ids) __builtin_prefetch(dense + id_offset + ahead, 0, 1);
            }
            v = dense[key];
          }
          const int64_t q = std::upper_bound(b_f, b_f + E, v) - b_f - 1;
          TORCH_CHECK(q >= 0 && q <= Q, "lookup row ", v, " of feature ", f, " is outside its buckets");
          const int64_t k = q == Q ? -1 : slot_of[q * F + f];
          const float wt = weights != nullptr ? weights[i] : 1.0f;
          if (weight_dst != nullptr) weight_dst[i] = wt;
          if (k < 0) {
            dst[i] = {nullptr, nullptr, 0, wt};
            if (key_dst != nullptr) key_dst[i] = -1;
            continue;
          }
          const int64_t local = v - b_f[q], w = width[k];
          if (key_dst != nullptr) key_dst[i] = static_cast<int32_t>(row_offset[k] + local);
          dst[i] = {table[k] + local * row_stride[k],
                    maps + slot_map_base[k] + (map_base[k] + map_stride[k] * local) * w, static_cast<int32_t>(identity[k] ? -w : w), wt};
        }
      }
    }
  });
  // Pass 2, in output row order (r = b * F + f): sum the bag's ids into one K-wide row, store it once.
  const bool stream = K % 4 == 0 && reinterpret_cast<uintptr_t>(out) % 16 == 0;
  at::parallel_for(0, B * F, 512, [&](int64_t begin, int64_t end) {
    std::vector<float> row(static_cast<size_t>(K));
    const int64_t last = out_offsets[end];
    for (int64_t r = begin; r < end; ++r) {
      float* o = row.data();
      std::memset(o, 0, sizeof(float) * K);
      const int64_t j0 = out_offsets[r], j1 = out_offsets[r + 1];
      for (int64_t i = j0; i < j1; ++i) {
        if (i + kLookAhead < last) {
          const IdRef<M>& ahead = ref[i + kLookAhead];
          if (ahead.values != nullptr) {
            const int64_t aw = ahead.width < 0 ? -ahead.width : ahead.width;
            prefetch_bytes(ahead.values, aw * static_cast<int64_t>(sizeof(float)));
            if (ahead.width > 0) prefetch_bytes(ahead.map, aw * static_cast<int64_t>(sizeof(M)));
          }
        }
        const IdRef<M>& a = ref[i];
        if (a.values == nullptr) continue;
        const float wt = a.weight;
        if (a.width < 0) {
          for (int64_t j = 0; j < -a.width; ++j) o[j] += wt * a.values[j];
          continue;
        }
        for (int64_t j = 0; j < a.width; ++j) {
          const int c = static_cast<int>(a.map[j]);
          if (c >= 0) o[c] += wt * a.values[j];
        }
      }
      const int64_t L = j1 - j0;
      if (mean && L > 1) {
        const float d = static_cast<float>(L);
        for (int64_t j = 0; j < K; ++j) o[j] /= d;
      }
      float* dst = out + r * K;
#if defined(__SSE2__)
      if (stream) {
        for (int64_t j = 0; j < K; j += 4) _mm_stream_ps(dst + j, _mm_loadu_ps(o + j));
        continue;
      }
#endif
      std::memcpy(dst, o, sizeof(float) * K);
    }
  });
#if defined(__SSE2__)
  if (stream) _mm_sfence();
#endif
}

// The lookup; with keys_out, also every id's key (row_offset[slot] + local row, -1 dropped) in output order,
// the bags' id offsets in output order and, for weighted ids, their weights in output order: what
// tier_update needs.
std::vector<at::Tensor> lookup(const at::Tensor& ids, const at::Tensor& lengths,
                               const c10::optional<at::Tensor>& weights, const at::Tensor& features,
                               const at::Tensor& dense, const at::Tensor& run_starts, const at::Tensor& run_deltas,
                               const at::Tensor& run_directory, const at::Tensor& boundaries, const at::Tensor& slot_of,
                               at::TensorList tables, const at::Tensor& map_base, const at::Tensor& map_stride,
                               const at::Tensor& slot_map_base, const at::Tensor& maps, int64_t batch_size,
                               int64_t embedding_dim, bool mean, bool keys_out) {
  TORCH_CHECK(ids.dim() == 1 && (ids.scalar_type() == at::kLong || ids.scalar_type() == at::kInt),
              "ids must be [n] int64 or int32");
  TORCH_CHECK(boundaries.dim() == 2 && boundaries.scalar_type() == at::kInt && boundaries.is_contiguous(),
              "boundaries must be [F, Q + 2] int32");
  const int64_t F = boundaries.size(0), E = boundaries.size(1), Q = E - 2, B = batch_size, K = embedding_dim;
  const int64_t T = static_cast<int64_t>(tables.size());
  TORCH_CHECK(lengths.dim() == 1 && lengths.size(0) == F * B, "lengths has ", lengths.numel(),
              " bags, expected F * B = ", F * B);
  TORCH_CHECK(features.scalar_type() == at::kLong && features.is_contiguous() && features.dim() == 2 &&
                  features.size(0) == F && features.size(1) == kFeatureFields,
              "features must be [F, 6] int64 (TierRemap.features)");
  TORCH_CHECK(run_directory.scalar_type() == at::kLong && run_directory.is_contiguous(),
              "run_directory must be int64");
  TORCH_CHECK(dense.scalar_type() == at::kInt && dense.is_contiguous(), "dense must be an int32 remap table");
  TORCH_CHECK(run_starts.scalar_type() == at::kLong && run_deltas.scalar_type() == at::kLong &&
                  run_starts.is_contiguous() && run_deltas.is_contiguous() && run_starts.numel() == run_deltas.numel(),
              "run_starts / run_deltas must be [R] int64");
  TORCH_CHECK(slot_of.scalar_type() == at::kLong && slot_of.numel() == (Q + 1) * F, "slot_of must be [(Q+1)F] int64");
  for (const at::Tensor* t : {&map_base, &map_stride, &slot_map_base}) {
    TORCH_CHECK(t->scalar_type() == at::kLong && t->numel() == T && t->is_contiguous(),
                "map_base / map_stride / slot_map_base must be [T] int64, T = ", T, " tables");
  }
  TORCH_CHECK(maps.dim() == 1 && maps.is_contiguous() &&
                  (maps.scalar_type() == at::kChar || maps.scalar_type() == at::kShort),
              "maps must be a flat int8 or int16 tensor");
  const int64_t* fe = features.data_ptr<int64_t>();
  const int64_t* rs = run_starts.data_ptr<int64_t>();
  for (int64_t f = 0; f < F; ++f) {
    const int64_t* r = fe + f * kFeatureFields;
    const bool ok = r[0] == 0 ? r[1] >= 0 && r[1] + r[2] <= dense.numel()
                              : r[3] >= 0 && r[3] <= r[4] && r[4] <= run_starts.numel() &&
                                    (r[2] == 0 || (r[3] < r[4] && rs[r[3]] <= r[1])) && r[5] >= 0 &&
                                    r[5] + ((r[2] + (1 << kRunBlockShift) - 1) >> kRunBlockShift) < run_directory.numel();
    TORCH_CHECK(ok, "feature ", f, "'s remap entry is outside the remap tables");
  }
  std::vector<const float*> table(T);
  std::vector<int64_t> stride(T), width(T);
  for (int64_t k = 0; k < T; ++k) {
    const at::Tensor& t = tables[k];
    TORCH_CHECK(t.dim() == 2 && t.scalar_type() == at::kFloat && t.device().is_cpu() &&
                    (t.size(1) <= 1 || t.stride(1) == 1),
                "tier table ", k, " must be a [rows, w] float32 CPU tensor with unit column stride");
    TORCH_CHECK(t.size(1) <= K, "tier table ", k, " is wider than K = ", K);
    table[k] = t.data_ptr<float>();
    stride[k] = t.size(0) > 1 ? t.stride(0) : t.size(1);
    width[k] = t.size(1);
  }
  const at::Tensor len64 = lengths.to(at::kLong).contiguous();
  at::Tensor offsets = at::empty({F * B + 1}, len64.options());
  int64_t* off = offsets.data_ptr<int64_t>();
  const int64_t* len = len64.data_ptr<int64_t>();
  off[0] = 0;
  for (int64_t i = 0; i < F * B; ++i) {
    TORCH_CHECK(len[i] >= 0, "bag ", i, " has negative length ", len[i]);
    off[i + 1] = off[i] + len[i];
  }
  TORCH_CHECK(off[F * B] == ids.size(0), "lengths sum to ", off[F * B], ", the KJT has ", ids.size(0), " ids");
  std::vector<int64_t> out_off(static_cast<size_t>(F * B + 1), 0);
  for (int64_t b = 0, r = 0; b < B; ++b) {
    for (int64_t f = 0; f < F; ++f, ++r) out_off[r + 1] = out_off[r] + len[f * B + b];
  }
  at::Tensor w_in;
  const float* wp = nullptr;
  if (weights.has_value() && weights->defined()) {
    w_in = weights->to(at::kFloat).contiguous();
    TORCH_CHECK(w_in.numel() == ids.size(0), "weights must be [n]");
    wp = w_in.data_ptr<float>();
  }
  const at::Tensor v = ids.contiguous();
  at::Tensor out = at::empty({F * B, K}, lengths.options().dtype(at::kFloat));
  const auto long_opts = lengths.options().dtype(at::kLong);
  at::Tensor row_offset = at::empty({T + 1}, long_opts);
  at::Tensor keys = at::empty({keys_out ? ids.size(0) : 0}, lengths.options().dtype(at::kInt));
  at::Tensor key_weights =
      at::empty({keys_out && wp != nullptr ? ids.size(0) : 0}, lengths.options().dtype(at::kFloat));
  at::Tensor out_offsets = at::empty({keys_out ? F * B + 1 : 0}, long_opts);
  int64_t* ro = row_offset.data_ptr<int64_t>();
  ro[0] = 0;
  for (int64_t k = 0; k < T; ++k) ro[k + 1] = ro[k] + tables[k].size(0);
  TORCH_CHECK(!keys_out || ro[T] < (int64_t{1} << 31), "tier tables hold ", ro[T], " rows, more than int32 keys");
  if (keys_out) std::copy(out_off.begin(), out_off.end(), out_offsets.data_ptr<int64_t>());
  auto run = [&](auto id_tag, auto map_tag) {
    using I = decltype(id_tag);
    using M = decltype(map_tag);
    lookup_impl<I, M>(v.data_ptr<I>(), off, out_off.data(), wp, fe, dense.data_ptr<int32_t>(), run_starts.data_ptr<int64_t>(),
                      run_deltas.data_ptr<int64_t>(), run_directory.data_ptr<int64_t>(), boundaries.data_ptr<int32_t>(), E, slot_of.data_ptr<int64_t>(),
                      table, stride, width, map_base.data_ptr<int64_t>(), map_stride.data_ptr<int64_t>(),
                      slot_map_base.data_ptr<int64_t>(), maps.data_ptr<M>(), F, B, K, mean, out.data_ptr<float>(), ro,
                      keys_out ? keys.data_ptr<int32_t>() : nullptr,
                      keys_out && wp != nullptr ? key_weights.data_ptr<float>() : nullptr);
  };
  const bool wide_ids = v.scalar_type() == at::kLong;
  if (maps.scalar_type() == at::kChar) {
    wide_ids ? run(int64_t{}, int8_t{}) : run(int32_t{}, int8_t{});
  } else {
    wide_ids ? run(int64_t{}, int16_t{}) : run(int32_t{}, int16_t{});
  }
  return {out, keys, out_offsets, key_weights, row_offset};
}

at::Tensor tier_lookup(const at::Tensor& ids, const at::Tensor& lengths, const c10::optional<at::Tensor>& weights,
                       const at::Tensor& features, const at::Tensor& dense, const at::Tensor& run_starts,
                       const at::Tensor& run_deltas, const at::Tensor& run_directory, const at::Tensor& boundaries,
                       const at::Tensor& slot_of, at::TensorList tables, const at::Tensor& map_base,
                       const at::Tensor& map_stride, const at::Tensor& slot_map_base, const at::Tensor& maps,
                       int64_t batch_size, int64_t embedding_dim, bool mean) {
  return lookup(ids, lengths, weights, features, dense, run_starts, run_deltas, run_directory, boundaries, slot_of,
                tables, map_base, map_stride, slot_map_base, maps, batch_size, embedding_dim, mean, false)[0];
}

std::vector<at::Tensor> tier_lookup_keys(const at::Tensor& ids, const at::Tensor& lengths,
                                         const c10::optional<at::Tensor>& weights, const at::Tensor& features,
                                         const at::Tensor& dense, const at::Tensor& run_starts,
                                         const at::Tensor& run_deltas, const at::Tensor& run_directory,
                                         const at::Tensor& boundaries, const at::Tensor& slot_of,
                                         at::TensorList tables, const at::Tensor& map_base,
                                         const at::Tensor& map_stride, const at::Tensor& slot_map_base,
                                         const at::Tensor& maps, int64_t batch_size, int64_t embedding_dim,
                                         bool mean) {
  return lookup(ids, lengths, weights, features, dense, run_starts, run_deltas, run_directory, boundaries, slot_of,
                tables, map_base, map_stride, slot_map_base, maps, batch_size, embedding_dim, mean, true);
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(recdim, m) {
  m.def(
      "tier_lookup(Tensor ids, Tensor lengths, Tensor? weights, Tensor features, Tensor dense, Tensor run_starts, "
      "Tensor run_deltas, Tensor run_directory, Tensor boundaries, Tensor slot_of, Tensor[] tables, Tensor map_base, Tensor map_stride, "
      "Tensor slot_map_base, Tensor maps, int batch_size, int embedding_dim, bool mean) -> Tensor");
  m.def(
      "tier_lookup_keys(Tensor ids, Tensor lengths, Tensor? weights, Tensor features, Tensor dense, "
      "Tensor run_starts, Tensor run_deltas, Tensor run_directory, Tensor boundaries, Tensor slot_of, "
      "Tensor[] tables, Tensor map_base, Tensor map_stride, Tensor slot_map_base, Tensor maps, int batch_size, "
      "int embedding_dim, bool mean) -> Tensor[]");
}

TORCH_LIBRARY_IMPL(recdim, CPU, m) {
  m.impl("tier_lookup", &tier_lookup);
  m.impl("tier_lookup_keys", &tier_lookup_keys);
}
