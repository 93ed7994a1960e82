-- parley schema, SQLite. Timestamps are Unix epoch milliseconds; JSON columns hold JSON text.
CREATE TABLE tenants (
  id          TEXT PRIMARY KEY,
  slug        TEXT NOT NULL,
  name        TEXT NOT NULL,
  status      TEXT NOT NULL CHECK (status IN ('active', 'suspended', 'deleted')),
  config      TEXT NOT NULL DEFAULT '{}',
  created_at  INTEGER NOT NULL,
  updated_at  INTEGER NOT NULL
);
-- A slug is unique among tenants that are not deleted, so a deleted tenant frees its slug.
CREATE UNIQUE INDEX tenants_live_slug ON tenants (slug) WHERE status <> 'deleted';

CREATE TABLE api_keys (
  id                    TEXT PRIMARY KEY,
  tenant_id             TEXT NOT NULL REFERENCES tenants (id),
  name                  TEXT NOT NULL,
  secret_hash           TEXT NOT NULL,
  scopes                TEXT NOT NULL,
  expires_at            INTEGER,
  revoked_at            INTEGER,
  previous_secret_hash  TEXT,
  previous_valid_until  INTEGER,
  last_used_at          INTEGER,
  created_at            INTEGER NOT NULL,
  updated_at            INTEGER NOT NULL
);
CREATE INDEX api_keys_by_tenant ON api_keys (tenant_id, id);

CREATE TABLE conversations (
  id          TEXT PRIMARY KEY,
  tenant_id   TEXT NOT NULL REFERENCES tenants (id),
  metadata    TEXT NOT NULL DEFAULT '{}',
  created_at  INTEGER NOT NULL,
  updated_at  INTEGER NOT NULL
);
CREATE INDEX conversations_by_tenant ON conversations (tenant_id, id);

CREATE TABLE messages (
  conversation_id    TEXT NOT NULL REFERENCES conversations (id) ON DELETE CASCADE,
  tenant_id          TEXT NOT NULL,
  seq                INTEGER NOT NULL,
  role               TEXT NOT NULL,
  content            TEXT NOT NULL,
  prompt_tokens      INTEGER NOT NULL DEFAULT 0,
  completion_tokens  INTEGER NOT NULL DEFAULT 0,
  created_at         INTEGER NOT NULL,
  PRIMARY KEY (conversation_id, seq)
);

CREATE TABLE usage (
  tenant_id          TEXT NOT NULL,
  key_id             TEXT NOT NULL,
  model              TEXT NOT NULL,
  period_start       INTEGER NOT NULL,
  requests           INTEGER NOT NULL DEFAULT 0,
  prompt_tokens      INTEGER NOT NULL DEFAULT 0,
  completion_tokens  INTEGER NOT NULL DEFAULT 0,
  errors             INTEGER NOT NULL DEFAULT 0,
  PRIMARY KEY (tenant_id, key_id, model, period_start)
);

CREATE TABLE audit_log (
  id          TEXT PRIMARY KEY,
  at          INTEGER NOT NULL,
  actor       TEXT NOT NULL,
  action      TEXT NOT NULL,
  target      TEXT NOT NULL,
  tenant_id   TEXT NOT NULL DEFAULT '',
  request_id  TEXT NOT NULL DEFAULT '',
  details     TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX audit_log_by_tenant ON audit_log (tenant_id, id);
