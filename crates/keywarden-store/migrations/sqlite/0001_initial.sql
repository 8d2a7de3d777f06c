-- Keywarden's schema for SQLite (`docs/concepts.md#objects`, `docs/operations.md#what-is-recorded`). Timestamps are Unix milliseconds; JSON
-- values (scopes, allowlists, metadata, event data) are stored as text. STRICT tables make
-- SQLite refuse a value of the wrong type instead of storing it silently.

CREATE TABLE accounts (
    id          TEXT    NOT NULL PRIMARY KEY,
    name        TEXT    NOT NULL,
    plan        TEXT    NOT NULL,
    status      TEXT    NOT NULL,
    metadata    TEXT    NOT NULL,
    created_at  INTEGER NOT NULL
) STRICT;

CREATE TABLE applications (
    id                 TEXT    NOT NULL PRIMARY KEY,
    name               TEXT    NOT NULL,
    description        TEXT    NOT NULL,
    url                TEXT,
    scopes             TEXT    NOT NULL,
    production_scheme  TEXT    NOT NULL,
    production_lookup  TEXT    NOT NULL,
    production_hash    TEXT    NOT NULL,
    sandbox_scheme     TEXT    NOT NULL,
    sandbox_lookup     TEXT    NOT NULL,
    sandbox_hash       TEXT    NOT NULL,
    created_at         INTEGER NOT NULL
) STRICT;

-- Keys made under a grant keep `grant_id` after the grant is deleted (they are revoked,
-- not removed), so `grant_id` and `app_id` carry no foreign key.
CREATE TABLE api_keys (
    id                TEXT    NOT NULL PRIMARY KEY,
    account_id        TEXT    NOT NULL REFERENCES accounts (id),
    mode              TEXT    NOT NULL,
    key_type          TEXT    NOT NULL,
    name              TEXT    NOT NULL,
    description       TEXT    NOT NULL,
    owner             TEXT    NOT NULL,
    role              TEXT    NOT NULL,
    scopes            TEXT    NOT NULL,
    expires_at        INTEGER,
    ip_allowlist      TEXT    NOT NULL,
    rate_requests     INTEGER,
    rate_per_seconds  INTEGER,
    enabled           INTEGER NOT NULL CHECK (enabled IN (0, 1)),
    metadata          TEXT    NOT NULL,
    app_id            TEXT,
    grant_id          TEXT,
    prefix            TEXT    NOT NULL,
    start             TEXT    NOT NULL,
    key_hash          TEXT    NOT NULL,
    scheme            TEXT    NOT NULL,
    lookup            TEXT    NOT NULL,
    hash              TEXT    NOT NULL,
    prev_scheme       TEXT,
    prev_lookup       TEXT,
    prev_hash         TEXT,
    prev_key_hash     TEXT,
    prev_valid_until  INTEGER,
    created_at        INTEGER NOT NULL,
    last_used_at      INTEGER,
    last_used_ip      TEXT,
    revoked_at        INTEGER,
    revoked_reason    TEXT,
    recoverable       TEXT,
    CHECK ((rate_requests IS NULL) = (rate_per_seconds IS NULL)),
    CHECK ((prev_scheme IS NULL) = (prev_lookup IS NULL)
       AND (prev_scheme IS NULL) = (prev_hash IS NULL)
       AND (prev_scheme IS NULL) = (prev_key_hash IS NULL)
       AND (prev_scheme IS NULL) = (prev_valid_until IS NULL))
) STRICT;

-- Slow-hash lookup segments may collide, so lookups are indexed but not unique.
CREATE INDEX api_keys_lookup ON api_keys (lookup);
-- Most keys have no previous secret; the partial index holds only those that do.
CREATE INDEX api_keys_prev_lookup ON api_keys (prev_lookup) WHERE prev_lookup IS NOT NULL;
CREATE UNIQUE INDEX api_keys_key_hash ON api_keys (key_hash);
CREATE INDEX api_keys_account ON api_keys (account_id, mode, id);
CREATE INDEX api_keys_grant ON api_keys (grant_id) WHERE grant_id IS NOT NULL;

CREATE TABLE grants (
    id          TEXT    NOT NULL PRIMARY KEY,
    account_id  TEXT    NOT NULL REFERENCES accounts (id),
    app_id      TEXT    NOT NULL REFERENCES applications (id),
    scopes      TEXT    NOT NULL,
    created_at  INTEGER NOT NULL
) STRICT;

CREATE INDEX grants_account ON grants (account_id, id);

-- Audit events outlive nothing they point to on purpose: `account.erased` names an account
-- that no longer exists, so there is no foreign key.
CREATE TABLE audit_events (
    id          TEXT    NOT NULL PRIMARY KEY,
    account_id  TEXT,
    mode        TEXT,
    kind        TEXT    NOT NULL,
    actor       TEXT    NOT NULL,
    ip          TEXT,
    at          INTEGER NOT NULL,
    data        TEXT    NOT NULL
) STRICT;

CREATE INDEX audit_events_account ON audit_events (account_id, id);

-- Activity rows are trimmed per key to the newest N, ordered by (at, id).
CREATE TABLE activity (
    id      INTEGER NOT NULL PRIMARY KEY,
    key_id  TEXT    NOT NULL,
    at      INTEGER NOT NULL,
    ip      TEXT,
    method  TEXT    NOT NULL,
    path    TEXT    NOT NULL,
    status  INTEGER NOT NULL,
    code    TEXT    NOT NULL
) STRICT;

CREATE INDEX activity_key ON activity (key_id, at, id);

CREATE TABLE usage (
    account_id    TEXT    NOT NULL,
    mode          TEXT    NOT NULL,
    unit          TEXT    NOT NULL,
    period_start  INTEGER NOT NULL,
    used          INTEGER NOT NULL CHECK (used >= 0),
    PRIMARY KEY (account_id, mode, unit, period_start)
) STRICT;
