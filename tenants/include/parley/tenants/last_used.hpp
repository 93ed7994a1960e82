#pragma once

#include "parley/persistence/records.hpp"

#include <mutex>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

namespace parley::tenants {

/// Collects "key K was used at T" on the hot path and hands the batch to a periodic writer,
/// so last_used_at costs no database write per request. Thread-safe; O(1) per record.
class last_used_recorder {
public:
  void record(const std::string& key_id, persistence::millis at);
  /// Takes everything recorded since the last take (latest time per key).
  std::vector<std::pair<std::string, persistence::millis>> take();

private:
  std::mutex mu_;
  std::unordered_map<std::string, persistence::millis> pending_;
};

} // namespace parley::tenants
