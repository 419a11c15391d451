-- One-time codes: at most one live code per key ("login:email:<address>",
-- "login:phone:<number>", "email-change:<user id>"). Only a keyed hash of
-- the code is stored. A new code for a key replaces the old one; a verified
-- code is deleted (spent).

CREATE TABLE otp_codes (
    key        TEXT PRIMARY KEY NOT NULL,
    code_hash  TEXT NOT NULL,
    -- What the code proves, when the key alone does not say it (the new
    -- address of an email change).
    target     TEXT,
    attempts   INTEGER NOT NULL DEFAULT 0,
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL
);

CREATE INDEX otp_codes_expires_at_idx ON otp_codes (expires_at);
