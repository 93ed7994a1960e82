#pragma once

#include "parley/persistence/records.hpp"

#include <map>
#include <mutex>
#include <tuple>
#include <vector>

namespace parley::tenants {

/// Accumulates usage per (tenant, key, model, minute) in memory and hands the sums to a
/// periodic writer, so accounting costs no database write per request and no row lock is
/// hot. Each completed upstream attempt is added exactly once; a failed flush is put back.
/// Thread-safe; O(log n) per add.
class usage_batcher {
public:
  void add(const persistence::usage_delta& d);
  /// Takes everything accumulated so far.
  std::vector<persistence::usage_delta> take();
  /// Puts a batch back after a failed write (summed with anything added meanwhile).
  void restore(const std::vector<persistence::usage_delta>& batch);

private:
  using key = std::tuple<std::string, std::string, std::string, persistence::millis>;
  std::mutex mu_;
  std::map<key, persistence::usage_delta> pending_;
};

} // namespace parley::tenants
