-- Decisions counted by outcome code in time buckets (docs/analytics.md): per key
-- (account_id and key_id set), per account (key_id ''), and deployment-wide (both ''),
-- each in minute, hour and day buckets. Written by the batched writer.
CREATE TABLE decision_counts (
    granularity TEXT NOT NULL,
    bucket      INTEGER NOT NULL,
    account_id  TEXT NOT NULL,
    key_id      TEXT NOT NULL,
    mode        TEXT NOT NULL,
    code        TEXT NOT NULL,
    n           INTEGER NOT NULL,
    PRIMARY KEY (granularity, account_id, key_id, bucket, mode, code)
) STRICT;

CREATE INDEX decision_counts_bucket ON decision_counts (granularity, bucket);
