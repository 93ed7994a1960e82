-- parley schema, PostgreSQL. Timestamps are Unix epoch milliseconds; JSON columns are jsonb.
CREATE TABLE tenants (
  id          TEXT PRIMARY KEY,
  slug        TEXT NOT NULL,
  name        TEXT NOT NULL,
  status      TEXT NOT NULL CHECK (status IN ('active', 'suspended', 'deleted')),
  config      JSONB NOT NULL DEFAULT '{}',
  created_at  BIGINT NOT NULL,
  updated_at  BIGINT NOT NULL
);
-- A slug is unique among tenants that are not deleted, so a deleted tenant frees its slug.
CREATE UNIQUE INDEX tenants_live_slug ON tenants (slug) WHERE status <> 'deleted';

CREATE TABLE api_keys (
  id                    TEXT PRIMARY KEY,
  tenant_id             TEXT NOT NULL REFERENCES tenants (id),
  name                  TEXT NOT NULL,
  secret_hash           TEXT NOT NULL,
  scopes                JSONB NOT NULL,
  expires_at            BIGINT,
  revoked_at            BIGINT,
  previous_secret_hash  TEXT,
  previous_valid_until  BIGINT,
  last_used_at          BIGINT,
  created_at            BIGINT NOT NULL,
  updated_at            BIGINT NOT NULL
);
CREATE INDEX api_keys_by_tenant ON api_keys (tenant_id, id);

CREATE TABLE conversations (
  id          TEXT PRIMARY KEY,
  tenant_id   TEXT NOT NULL REFERENCES tenants (id),
  metadata    JSONB NOT NULL DEFAULT '{}',
  created_at  BIGINT NOT NULL,
  updated_at  BIGINT NOT NULL
);
CREATE INDEX conversations_by_tenant ON conversations (tenant_id, id);

CREATE TABLE messages (
  conversation_id    TEXT NOT NULL REFERENCES conversations (id) ON DELETE CASCADE,
  tenant_id          TEXT NOT NULL,
  seq                BIGINT NOT NULL,
  role               TEXT NOT NULL,
  content            JSONB NOT NULL,
  prompt_tokens      BIGINT NOT NULL DEFAULT 0,
  completion_tokens  BIGINT NOT NULL DEFAULT 0,
  created_at         BIGINT NOT NULL,
  PRIMARY KEY (conversation_id, seq)
);

CREATE TABLE usage (
  tenant_id          TEXT NOT NULL,
  key_id             TEXT NOT NULL,
  model              TEXT NOT NULL,
  period_start       BIGINT NOT NULL,
  requests           BIGINT NOT NULL DEFAULT 0,
  prompt_tokens      BIGINT NOT NULL DEFAULT 0,
  completion_tokens  BIGINT NOT NULL DEFAULT 0,
  errors             BIGINT NOT NULL DEFAULT 0,
  PRIMARY KEY (tenant_id, key_id, model, period_start)
);

CREATE TABLE audit_log (
  id          TEXT PRIMARY KEY,
  at          BIGINT NOT NULL,
  actor       TEXT NOT NULL,
  action      TEXT NOT NULL,
  target      TEXT NOT NULL,
  tenant_id   TEXT NOT NULL DEFAULT '',
  request_id  TEXT NOT NULL DEFAULT '',
  details     JSONB NOT NULL DEFAULT '{}'
);
CREATE INDEX audit_log_by_tenant ON audit_log (tenant_id, id);
