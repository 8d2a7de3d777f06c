-- Webhook endpoints, and the outbox of what they are sent (docs/webhooks.md). Messages and
-- deliveries are written in the transaction that writes their audit event.
CREATE TABLE webhook_endpoints (
    id                 TEXT    NOT NULL PRIMARY KEY,
    url                TEXT    NOT NULL,
    events             TEXT,
    account_id         TEXT REFERENCES accounts (id) ON DELETE CASCADE,
    mode               TEXT,
    description        TEXT    NOT NULL,
    enabled            INTEGER NOT NULL CHECK (enabled IN (0, 1)),
    secret             TEXT    NOT NULL,
    prev_secret        TEXT,
    prev_secret_until  INTEGER,
    failing_since      INTEGER,
    disabled_reason    TEXT,
    created_at         INTEGER NOT NULL,
    updated_at         INTEGER NOT NULL
) STRICT;

CREATE INDEX webhook_endpoints_account ON webhook_endpoints (account_id, id);

-- One body per event, shared by its deliveries.
CREATE TABLE webhook_messages (
    id          TEXT    NOT NULL PRIMARY KEY,
    kind        TEXT    NOT NULL,
    account_id  TEXT,
    payload     TEXT    NOT NULL,
    created_at  INTEGER NOT NULL
) STRICT;

CREATE INDEX webhook_messages_account ON webhook_messages (account_id);

CREATE TABLE webhook_deliveries (
    id                TEXT    NOT NULL PRIMARY KEY,
    endpoint_id       TEXT    NOT NULL REFERENCES webhook_endpoints (id) ON DELETE CASCADE,
    message_id        TEXT    NOT NULL REFERENCES webhook_messages (id) ON DELETE CASCADE,
    kind              TEXT    NOT NULL,
    status            TEXT    NOT NULL,
    attempts          INTEGER NOT NULL,
    next_attempt_at   INTEGER,
    locked_until      INTEGER,
    last_status       INTEGER,
    last_duration_ms  INTEGER,
    last_response     TEXT,
    last_error        TEXT,
    created_at        INTEGER NOT NULL,
    delivered_at      INTEGER,
    UNIQUE (endpoint_id, message_id)
) STRICT;

CREATE INDEX webhook_deliveries_due ON webhook_deliveries (next_attempt_at) WHERE status = 'pending';
CREATE INDEX webhook_deliveries_endpoint ON webhook_deliveries (endpoint_id, id);
CREATE INDEX webhook_deliveries_message ON webhook_deliveries (message_id);

CREATE TABLE webhook_attempts (
    delivery_id  TEXT    NOT NULL REFERENCES webhook_deliveries (id) ON DELETE CASCADE,
    at           INTEGER NOT NULL,
    status       INTEGER,
    duration_ms  INTEGER NOT NULL,
    response     TEXT    NOT NULL,
    error        TEXT
) STRICT;

CREATE INDEX webhook_attempts_delivery ON webhook_attempts (delivery_id, at);

-- Events raised once (a key expiring in 7 days, a quota at 80 %): the marker is written
-- with the event, so no process raises it twice.
CREATE TABLE fired_events (
    marker      TEXT    NOT NULL PRIMARY KEY,
    account_id  TEXT,
    at          INTEGER NOT NULL
) STRICT;

CREATE INDEX fired_events_account ON fired_events (account_id);
CREATE INDEX api_keys_expires ON api_keys (expires_at) WHERE expires_at IS NOT NULL;
CREATE INDEX api_keys_prev_valid ON api_keys (prev_valid_until) WHERE prev_valid_until IS NOT NULL;
