-- Cluster membership and tenant ownership (PostgreSQL only: a cluster shares one database).
-- Times are epoch milliseconds of the database's clock (clock_timestamp()), never a node's:
-- every lease is granted and judged by the same clock.
--
-- nodes: one row per node id. A node joins with a new incarnation (the old one's tenants are
-- then free to claim), renews its lease every TTL/4 -- only while the lease has not expired,
-- so an expired node can never come back to life under the same incarnation -- and marks
-- itself draining, then left, when it stops.
CREATE TABLE nodes (
  id               TEXT PRIMARY KEY,
  incarnation      BIGINT NOT NULL,
  address          TEXT NOT NULL,          -- host:port of its cluster (CAF middleman) listener
  http_address     TEXT NOT NULL DEFAULT '',
  status           TEXT NOT NULL,          -- active | draining | left
  lease_expires_at BIGINT NOT NULL,
  joined_at        BIGINT NOT NULL,
  updated_at       BIGINT NOT NULL
);

-- tenant_owners: which node (and incarnation) owns a tenant's actor, with an epoch that grows
-- at every change of owner. A node claims a tenant with one conditional upsert that succeeds
-- only while no other live node holds it, so at most one node believes it owns a tenant.
CREATE TABLE tenant_owners (
  tenant_id   TEXT PRIMARY KEY,
  node_id     TEXT NOT NULL,
  incarnation BIGINT NOT NULL,
  epoch       BIGINT NOT NULL,
  claimed_at  BIGINT NOT NULL
);
CREATE INDEX tenant_owners_node ON tenant_owners (node_id, incarnation);
