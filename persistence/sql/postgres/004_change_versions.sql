-- Cache invalidation across the nodes of a cluster (docs/cluster.md). Every committed change to
-- a key or a tenant moves its updated_at forward and is announced on the parley_invalidate
-- channel; a node that missed the announcement finds the row by version, every second, with
-- "updated_at > the newest version it has seen, less a lookback". These indexes keep that
-- query a short range scan, however many keys there are.
CREATE INDEX api_keys_by_version ON api_keys (updated_at);
CREATE INDEX tenants_by_version ON tenants (updated_at);
