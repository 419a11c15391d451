-- Accounts: users, login sessions and rotating refresh tokens.
--
-- Case-insensitive uniqueness lives in *_lower columns written by the
-- application, so the rule is the same on both backends.

CREATE TABLE users (
    id             TEXT PRIMARY KEY,
    username       TEXT NOT NULL,
    username_lower TEXT NOT NULL,
    display_name   TEXT NOT NULL,
    email          TEXT,
    email_lower    TEXT,
    phone          TEXT,
    password_hash  TEXT,
    created_at     TIMESTAMPTZ NOT NULL,
    CONSTRAINT users_username_lower_key UNIQUE (username_lower),
    CONSTRAINT users_email_lower_key UNIQUE (email_lower),
    CONSTRAINT users_phone_key UNIQUE (phone)
);

-- One row per login (password, OTP or registration). Access tokens carry the
-- session id as `sid`; revoking the session revokes its refresh tokens.
CREATE TABLE sessions (
    id         TEXT PRIMARY KEY,
    user_id    TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    created_at TIMESTAMPTZ NOT NULL,
    revoked_at TIMESTAMPTZ
);

CREATE INDEX sessions_user_id_idx ON sessions (user_id);

-- Only the SHA-256 of a refresh token is stored. A family is the chain of
-- tokens produced by rotation from one login; reuse of a spent token revokes
-- the whole family.
CREATE TABLE refresh_tokens (
    token_hash TEXT PRIMARY KEY,
    family_id  TEXT NOT NULL,
    session_id TEXT NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
    user_id    TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    expires_at TIMESTAMPTZ NOT NULL,
    spent_at   TIMESTAMPTZ,
    revoked_at TIMESTAMPTZ,
    created_at TIMESTAMPTZ NOT NULL
);

CREATE INDEX refresh_tokens_family_id_idx ON refresh_tokens (family_id);
CREATE INDEX refresh_tokens_session_id_idx ON refresh_tokens (session_id);
CREATE INDEX refresh_tokens_expires_at_idx ON refresh_tokens (expires_at);
