-- The fingerprint of the root key that made a portal link; the session the link opens
-- keeps it, and both count only while that root key is configured.
ALTER TABLE web_sessions ADD COLUMN root_key TEXT;
