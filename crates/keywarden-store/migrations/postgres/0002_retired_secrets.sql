-- Secrets a key no longer accepts because a later rotation replaced them as its previous
-- secret. Presented again, they are answered `api_key_revoked` rather than not recognised.
CREATE TABLE retired_secrets (
    key_id  TEXT COLLATE "C" NOT NULL REFERENCES api_keys (id) ON DELETE CASCADE,
    scheme  TEXT NOT NULL,
    lookup  TEXT NOT NULL,
    hash    TEXT NOT NULL
);

CREATE INDEX retired_secrets_lookup ON retired_secrets (lookup);
CREATE INDEX retired_secrets_key ON retired_secrets (key_id);
