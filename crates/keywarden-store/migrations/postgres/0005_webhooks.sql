-- Webhook endpoints, and the outbox of what they are sent (docs/webhooks.md). Messages and
-- deliveries are written in the transaction that writes their audit event.
CREATE TABLE webhook_endpoints (
    id                 TEXT COLLATE "C" NOT NULL PRIMARY KEY,
    url                TEXT    NOT NULL,
    events             TEXT,
    account_id         TEXT COLLATE "C" REFERENCES accounts (id) ON DELETE CASCADE,
    mode               TEXT,
    description        TEXT    NOT NULL,
    enabled            BOOLEAN NOT NULL,
    secret             TEXT    NOT NULL,
    prev_secret        TEXT,
    prev_secret_until  BIGINT,
    failing_since      BIGINT,
    disabled_reason    TEXT,
    created_at         BIGINT NOT NULL,
    updated_at         BIGINT NOT NULL
);

CREATE INDEX webhook_endpoints_account ON webhook_endpoints (account_id, id);

-- One body per event, shared by its deliveries.
CREATE TABLE webhook_messages (
    id          TEXT COLLATE "C" NOT NULL PRIMARY KEY,
    kind        TEXT    NOT NULL,
    account_id  TEXT,
    payload     TEXT    NOT NULL,
    created_at  BIGINT NOT NULL
);

CREATE INDEX webhook_messages_account ON webhook_messages (account_id);

CREATE TABLE webhook_deliveries (
    id                TEXT COLLATE "C" NOT NULL PRIMARY KEY,
    endpoint_id       TEXT COLLATE "C" NOT NULL REFERENCES webhook_endpoints (id) ON DELETE CASCADE,
    message_id        TEXT COLLATE "C" NOT NULL REFERENCES webhook_messages (id) ON DELETE CASCADE,
    kind              TEXT    NOT NULL,
    status            TEXT    NOT NULL,
    attempts          BIGINT NOT NULL,
    next_attempt_at   BIGINT,
    locked_until      BIGINT,
    last_status       BIGINT,
    last_duration_ms  BIGINT,
    last_response     TEXT,
    last_error        TEXT,
    created_at        BIGINT NOT NULL,
    delivered_at      BIGINT,
    UNIQUE (endpoint_id, message_id)
);

CREATE INDEX webhook_deliveries_due ON webhook_deliveries (next_attempt_at) WHERE status = 'pending';
CREATE INDEX webhook_deliveries_endpoint ON webhook_deliveries (endpoint_id, id);
CREATE INDEX webhook_deliveries_message ON webhook_deliveries (message_id);

CREATE TABLE webhook_attempts (
    delivery_id  TEXT COLLATE "C" NOT NULL REFERENCES webhook_deliveries (id) ON DELETE CASCADE,
    at           BIGINT NOT NULL,
    status       BIGINT,
    duration_ms  BIGINT NOT NULL,
    response     TEXT    NOT NULL,
    error        TEXT
);

CREATE INDEX webhook_attempts_delivery ON webhook_attempts (delivery_id, at);

-- Events raised once (a key expiring in 7 days, a quota at 80 %): the marker is written
-- with the event, so no process raises it twice.
CREATE TABLE fired_events (
    marker      TEXT COLLATE "C" NOT NULL PRIMARY KEY,
    account_id  TEXT,
    at          BIGINT NOT NULL
);

CREATE INDEX fired_events_account ON fired_events (account_id);
CREATE INDEX api_keys_expires ON api_keys (expires_at) WHERE expires_at IS NOT NULL;
CREATE INDEX api_keys_prev_valid ON api_keys (prev_valid_until) WHERE prev_valid_until IS NOT NULL;
