// tier_update: the backward of tier_lookup fused with the embedding optimizer, in place on the tier tables.
//
// tier_lookup_keys gave every id its key (row_offset[slot] + local row; -1 dropped) in output order, and the
// bags' id offsets in output order. Here the ids are sorted by key (LSD radix sort, stable), so each table row
// is visited once: its gradient is summed over its ids, each id reading its output row's gradient at the
// row's column map (times the id's weight, over the bag length for mean pooling), and the optimizer updates
// the row at once, as FBGEMM's fused kernels do:
//
//   sgd:             w -= lr * g
//   rowwise adagrad: m += sum(g * g) / w_k;  w -= lr * g / (sqrt(m) + eps)
//
// Padding slots get no gradient, so they stay zero. Rows are visited in key order (table after table, rows
// ascending), with the gradient rows and table rows a few ids ahead prefetched.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

namespace recdim_native {

// Defined in tier_lookup.cpp (int8 and int16 maps).
template <typename M>
std::vector<char> identity_slots(int64_t T, const std::vector<int64_t>& width, const int64_t* map_base,
                                 const int64_t* map_stride, const int64_t* slot_map_base, const M* maps);

}  // namespace recdim_native

namespace {

using recdim_native::identity_slots;

constexpr int64_t kUpdateAhead = 8;
constexpr int kRadixBits = 11;
constexpr int64_t kSgd = 0, kRowwiseAdagrad = 1;

inline void prefetch_row(const void* p, int64_t bytes, int rw) {
  const char* c = static_cast<const char*>(p);
  for (int64_t off = 0; off < bytes; off += 64) {
    if (rw) {
      __builtin_prefetch(c + off, 1, 1);
    } else {
      __builtin_prefetch(c + off, 0, 1);
    }
  }
}

// Positions of the kept ids sorted by key (stable: equal keys keep output order).
std::vector<int32_t> sort_by_key(const int32_t* keys, int64_t n, int64_t max_key) {
  std::vector<int32_t> order, next;
  order.reserve(static_cast<size_t>(n));
  for (int64_t j = 0; j < n; ++j) {
    if (keys[j] >= 0) order.push_back(static_cast<int32_t>(j));
  }
  next.resize(order.size());
  const int64_t radix = int64_t{1} << kRadixBits;
  std::vector<int64_t> count(static_cast<size_t>(radix));
  for (int shift = 0; (max_key >> shift) > 0; shift += kRadixBits) {
    std::fill(count.begin(), count.end(), 0);
    for (int32_t j : order) ++count[(keys[j] >> shift) & (radix - 1)];
    int64_t total = 0;
    for (int64_t d = 0; d < radix; ++d) {
      const int64_t c = count[d];
      count[d] = total;
      total += c;
    }
    for (int32_t j : order) next[count[(keys[j] >> shift) & (radix - 1)]++] = j;
    order.swap(next);
  }
  return order;
}

template <typename M>
void update_impl(const float* grad, int64_t K, const int32_t* keys, const std::vector<int32_t>& out_row,
                 const std::vector<float>& scale, const std::vector<int32_t>& order, const int64_t* row_offset,
                 int64_t T, const std::vector<float*>& table, const std::vector<int64_t>& row_stride,
                 const std::vector<int64_t>& width, const std::vector<float*>& momentum, const double* lr, double eps,
                 int64_t optimizer, const int64_t* map_base, const int64_t* map_stride, const int64_t* slot_map_base,
                 const M* maps) {
  const int64_t m = static_cast<int64_t>(order.size());
  std::vector<float> acc(static_cast<size_t>(K));
  // Slots whose rows share the identity prefix map [0, w): gradients are read as contiguous runs.
  const std::vector<char> identity = identity_slots(T, width, map_base, map_stride, slot_map_base, maps);
  int64_t k = 0;
  for (int64_t p = 0; p < m;) {
    const int32_t key = keys[order[p]];
    while (row_offset[k + 1] <= key) ++k;
    const int64_t local = key - row_offset[k], w = width[k];
    const M* map = maps + slot_map_base[k] + (map_base[k] + map_stride[k] * local) * w;
    float* row = table[k] + local * row_stride[k];
    std::memset(acc.data(), 0, sizeof(float) * w);
    int64_t q = p;
    for (; q < m && keys[order[q]] == key; ++q) {
      if (q + kUpdateAhead < m) {
        const int32_t ahead = order[q + kUpdateAhead];
        prefetch_row(grad + static_cast<int64_t>(out_row[ahead]) * K, K * static_cast<int64_t>(sizeof(float)), 0);
        const int32_t ahead_key = keys[ahead];
        int64_t k2 = k;
        while (k2 + 1 < T && row_offset[k2 + 1] <= ahead_key) ++k2;
        prefetch_row(table[k2] + (ahead_key - row_offset[k2]) * row_stride[k2],
                     width[k2] * static_cast<int64_t>(sizeof(float)), 1);
      }
      const int32_t j = order[q];
      const float* g = grad + static_cast<int64_t>(out_row[j]) * K;
      const float s = scale[j];
      if (identity[k]) {
        for (int64_t c = 0; c < w; ++c) acc[c] += s * g[c];
        continue;
      }
      for (int64_t c = 0; c < w; ++c) {
        const int col = static_cast<int>(map[c]);
        if (col >= 0) acc[c] += s * g[col];
      }
    }
    const float rate = static_cast<float>(lr[k]);
    if (optimizer == kRowwiseAdagrad) {
      float sum = 0.0f;
      for (int64_t c = 0; c < w; ++c) sum += acc[c] * acc[c];
      float& mo = momentum[k][local];
      mo += sum / static_cast<float>(w);
      const float mult = rate / (std::sqrt(mo) + static_cast<float>(eps));
      for (int64_t c = 0; c < w; ++c) row[c] -= mult * acc[c];
    } else {
      for (int64_t c = 0; c < w; ++c) row[c] -= rate * acc[c];
    }
    p = q;
  }
}

void tier_update(const at::Tensor& grad, const at::Tensor& keys, const at::Tensor& out_offsets,
                 const at::Tensor& key_weights, bool mean, at::TensorList tables, at::TensorList momenta,
                 const at::Tensor& row_offset, const at::Tensor& lr, double eps, int64_t optimizer,
                 const at::Tensor& map_base, const at::Tensor& map_stride, const at::Tensor& slot_map_base,
                 const at::Tensor& maps) {
  TORCH_CHECK(grad.dim() == 2 && grad.scalar_type() == at::kFloat, "grad must be [R, K] float32");
  const at::Tensor g = grad.contiguous();
  const int64_t R = g.size(0), K = g.size(1), T = static_cast<int64_t>(tables.size());
  TORCH_CHECK(keys.dim() == 1 && keys.scalar_type() == at::kInt && keys.is_contiguous(), "keys must be [n] int32");
  TORCH_CHECK(out_offsets.scalar_type() == at::kLong && out_offsets.numel() == R + 1 && out_offsets.is_contiguous(),
              "out_offsets must be [R + 1] int64");
  TORCH_CHECK(row_offset.scalar_type() == at::kLong && row_offset.numel() == T + 1, "row_offset must be [T + 1]");
  TORCH_CHECK(lr.scalar_type() == at::kDouble && lr.numel() == T, "lr must be [T] float64");
  TORCH_CHECK(optimizer == kSgd || optimizer == kRowwiseAdagrad, "optimizer must be 0 (sgd) or 1 (rowwise adagrad)");
  TORCH_CHECK(optimizer == kSgd || static_cast<int64_t>(momenta.size()) == T, "rowwise adagrad needs T momenta");
  for (const at::Tensor* t : {&map_base, &map_stride, &slot_map_base}) {
    TORCH_CHECK(t->scalar_type() == at::kLong && t->numel() == T && t->is_contiguous(), "slot tables must be [T]");
  }
  const int64_t n = keys.size(0);
  const int64_t* off = out_offsets.data_ptr<int64_t>();
  TORCH_CHECK(off[R] == n, "out_offsets end at ", off[R], ", keys has ", n);
  const bool weighted = key_weights.numel() > 0;
  TORCH_CHECK(!weighted || (key_weights.numel() == n && key_weights.scalar_type() == at::kFloat),
              "key_weights must be empty or [n] float32");
  std::vector<float*> table(T), momentum(T, nullptr);
  std::vector<int64_t> stride(T), width(T);
  const int64_t* ro = row_offset.data_ptr<int64_t>();
  for (int64_t k = 0; k < T; ++k) {
    const at::Tensor& t = tables[k];
    TORCH_CHECK(t.dim() == 2 && t.scalar_type() == at::kFloat && (t.size(1) <= 1 || t.stride(1) == 1) &&
                    t.size(0) == ro[k + 1] - ro[k],
                "tier table ", k, " must be a [rows, w] float32 tensor matching row_offset");
    table[k] = t.data_ptr<float>();
    stride[k] = t.size(0) > 1 ? t.stride(0) : t.size(1);
    width[k] = t.size(1);
    if (optimizer == kRowwiseAdagrad) {
      const at::Tensor& mo = momenta[k];
      TORCH_CHECK(mo.scalar_type() == at::kFloat && mo.numel() == t.size(0) && mo.is_contiguous(),
                  "momentum ", k, " must be [rows] float32");
      momentum[k] = mo.data_ptr<float>();
    }
  }
  // Each id's output row and gradient scale (weight, over the bag length for mean pooling).
  std::vector<int32_t> out_row(static_cast<size_t>(n));
  std::vector<float> scale(static_cast<size_t>(n), 1.0f);
  const float* kw = weighted ? key_weights.data_ptr<float>() : nullptr;
  for (int64_t r = 0; r < R; ++r) {
    const int64_t L = off[r + 1] - off[r];
    for (int64_t j = off[r]; j < off[r + 1]; ++j) {
      out_row[j] = static_cast<int32_t>(r);
      float s = kw != nullptr ? kw[j] : 1.0f;
      if (mean && L > 1) s /= static_cast<float>(L);
      scale[j] = s;
    }
  }
  const int32_t* kp = keys.data_ptr<int32_t>();
  for (int64_t j = 0; j < n; ++j) TORCH_CHECK(kp[j] < ro[T], "key ", kp[j], " is past the ", ro[T], " tier rows");
  const std::vector<int32_t> order = sort_by_key(kp, n, ro[T]);
  const double* lrp = lr.data_ptr<double>();
  AT_DISPATCH_SWITCH(maps.scalar_type(), "tier_update",
                     AT_DISPATCH_CASE(at::kChar, [&] {
                       update_impl<int8_t>(g.data_ptr<float>(), K, kp, out_row, scale, order, ro, T, table, stride,
                                           width, momentum, lrp, eps, optimizer, map_base.data_ptr<int64_t>(),
                                           map_stride.data_ptr<int64_t>(), slot_map_base.data_ptr<int64_t>(),
                                           maps.data_ptr<int8_t>());
                     }) AT_DISPATCH_CASE(at::kShort, [&] {
                       update_impl<int16_t>(g.data_ptr<float>(), K, kp, out_row, scale, order, ro, T, table, stride,
                                            width, momentum, lrp, eps, optimizer, map_base.data_ptr<int64_t>(),
                                            map_stride.data_ptr<int64_t>(), slot_map_base.data_ptr<int64_t>(),
                                            maps.data_ptr<int16_t>());
                     }));
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(recdim, m) {
  m.def(
      "tier_update(Tensor grad, Tensor keys, Tensor out_offsets, Tensor key_weights, bool mean, "
      "Tensor(a!)[] tables, Tensor(b!)[] momenta, Tensor row_offset, Tensor lr, float eps, int optimizer, "
      "Tensor map_base, Tensor map_stride, Tensor slot_map_base, Tensor maps) -> ()");
}

TORCH_LIBRARY_IMPL(recdim, CPU, m) { m.impl("tier_update", &tier_update); }
