-- The usage ledger: one row per upstream attempt, keyed by (request id, attempt) so that a
-- write retried after an ambiguous failure can never count twice. The `usage` table becomes
-- its per-minute rollup, updated in the same transaction as each newly inserted row.
CREATE TABLE usage_ledger (
  request_id         TEXT NOT NULL,
  attempt            INTEGER NOT NULL,
  tenant_id          TEXT NOT NULL,
  key_id             TEXT NOT NULL,
  model              TEXT NOT NULL,
  served_model       TEXT NOT NULL,
  deployment         TEXT NOT NULL,
  prompt_tokens      INTEGER NOT NULL DEFAULT 0,
  completion_tokens  INTEGER NOT NULL DEFAULT 0,
  outcome            TEXT NOT NULL,
  upstream_status    INTEGER NOT NULL DEFAULT 0,
  at                 INTEGER NOT NULL,
  PRIMARY KEY (request_id, attempt)
);
CREATE INDEX usage_ledger_tenant_at ON usage_ledger (tenant_id, at);
