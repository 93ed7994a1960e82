#pragma once

#include <caf/meta/type_name.hpp>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <mutex>
#include <string>
#include <vector>

/// What the actors know of the cluster: this node's identity and lease (kept by runtime's
/// membership loop), the live members, and where a tenant is placed.
namespace parley::actors {

/// This node in the cluster: its stable id, its current incarnation, and whether it holds a
/// live lease (a node without one serves no tenants). Written by the membership loop, read
/// by the tenant manager; thread-safe.
class cluster_identity {
public:
  explicit cluster_identity(std::string node_id = {}) : node_id_(std::move(node_id)) {}
  /// Read only while an incarnation is held (or after the first set_incarnation).
  const std::string& node_id() const noexcept { return node_id_; }
  /// Names the node; only before the first set_incarnation (its release publishes the name).
  void set_node_id(std::string id) { node_id_ = std::move(id); }
  /// The incarnation whose lease we hold; 0 = none (not joined yet, or the lease was lost).
  int64_t incarnation() const noexcept { return incarnation_.load(std::memory_order_acquire); }
  void set_incarnation(int64_t i) noexcept { incarnation_.store(i, std::memory_order_release); }

  /// The local steady-clock deadline of the lease (nanoseconds since the clock's epoch): no
  /// admission after it, even before the watchdog's fence has stopped the tenant actors.
  void set_lease_deadline(int64_t steady_ns) noexcept {
    deadline_ns_.store(steady_ns, std::memory_order_release);
  }
  bool lease_valid() const noexcept {
    auto now = std::chrono::duration_cast<std::chrono::nanoseconds>(
                 std::chrono::steady_clock::now().time_since_epoch())
                 .count();
    return incarnation() != 0 && now < deadline_ns_.load(std::memory_order_acquire);
  }

private:
  std::string node_id_;
  std::atomic<int64_t> incarnation_{0};
  std::atomic<int64_t> deadline_ns_{0};
};

/// A live member as the directory sees it.
struct cluster_member {
  std::string node_id;
  int64_t incarnation = 0;
  std::string host;
  uint16_t port = 0;
  bool active = false; ///< takes new tenants (false: draining)
};

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, cluster_member& x) {
  return f(caf::meta::type_name("cluster_member"), x.node_id, x.incarnation, x.host, x.port,
           x.active);
}

/// Rendezvous (highest random weight) placement: the active member with the highest
/// hash(node id, tenant id) owns the tenant. Adding or removing a node moves only the
/// tenants that it gains or held (about 1/N of them). "" when no member is active.
std::string place(const std::string& tenant_id, const std::vector<cluster_member>& members);

} // namespace parley::actors
