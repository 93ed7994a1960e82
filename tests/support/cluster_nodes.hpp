#pragma once

#include "support/pg_schema.hpp"
#include "support/process.hpp"

#include <memory>
#include <string>
#include <vector>

/// Several `parley serve --cluster` processes on loopback sharing one PostgreSQL schema of
/// their own (PARLEY_TEST_PG_DSN: [pg] tests REQUIRE it). Each node has its own HTTP and
/// cluster port and data directory; they share the admin key and pepper, so a key created
/// through one node authenticates on every node.
namespace parley::test {

class cluster_nodes {
public:
  /// Starts `n` nodes and waits until each lists all `n` as live in GET /admin/v1/cluster.
  /// `extra_toml` is appended to every node's configuration (routes, limits, ...).
  explicit cluster_nodes(int n, const std::string& extra_toml = "", int lease_ttl_ms = 2000);
  /// One node per entry of `per_node_toml`, each entry appended to that node's configuration
  /// right after its [cluster] settings (so bare keys there are cluster keys).
  explicit cluster_nodes(const std::vector<std::string>& per_node_toml, int lease_ttl_ms = 2000);
  ~cluster_nodes();

  int size() const noexcept { return static_cast<int>(nodes_.size()); }
  /// HTTP port of node i (0 when it is stopped).
  uint16_t port(int i) const { return nodes_.at(i).http_port; }
  /// The node id of node i (its advertised cluster address).
  const std::string& node_id(int i) const { return nodes_.at(i).node_id; }
  /// Index of the node with this id, or -1.
  int index_of(const std::string& node_id) const;
  child_process& process(int i) { return *nodes_.at(i).proc; }
  /// SIGTERM and wait for the exit (true when it exited within `timeout`).
  bool stop(int i, std::chrono::milliseconds timeout = std::chrono::seconds(30));
  /// The scoped DSN the nodes use (for direct checks against the tables).
  std::string dsn() const { return schema_.scoped_dsn(); }
  /// The configuration a node of this cluster gets (data under `dir`), with `extra_toml`
  /// appended right after its [cluster] settings: for starting a process by hand.
  std::string config_toml(const temp_dir& dir, const std::string& extra_toml) const;
  /// Everything node i printed.
  std::string output(int i) const;

private:
  struct node {
    std::unique_ptr<temp_dir> dir;
    std::unique_ptr<child_process> proc;
    uint16_t http_port = 0;
    std::string node_id;
  };
  pg_schema schema_;
  int lease_ttl_ms_ = 2000;
  std::vector<node> nodes_;
};

} // namespace parley::test
