-- Sessions of the operator console and the customer portal, and single-use portal links.
-- Only the SHA-256 of a session id is stored; the id itself lives in the browser's cookie.
CREATE TABLE web_sessions (
    id_hash     TEXT PRIMARY KEY,
    kind        TEXT NOT NULL,
    account_id  TEXT,
    mode        TEXT,
    role        TEXT,
    return_url  TEXT,
    created_at  INTEGER NOT NULL,
    expires_at  INTEGER NOT NULL
) STRICT;

CREATE INDEX web_sessions_account ON web_sessions (account_id);
CREATE INDEX web_sessions_expiry ON web_sessions (expires_at);
