-- Chat: conversations, members with read/delivered watermarks, messages with
-- a gapless per-conversation seq, the outbox, contacts, blocks, full-text
-- search and presence.
--
-- Timestamps are INTEGER microseconds since the Unix epoch (UTC), as in V1.

-- When the user was last seen online (presence).
ALTER TABLE users ADD COLUMN last_seen_at INTEGER;

-- Lower-cased display name for case-insensitive user search, written by the
-- application like the other *_lower columns (SQLite's lower() folds ASCII
-- only). Whatever changes display_name must keep it in step.
ALTER TABLE users ADD COLUMN display_name_lower TEXT NOT NULL DEFAULT '';
UPDATE users SET display_name_lower = lower(display_name);

CREATE TABLE conversations (
    id               TEXT PRIMARY KEY NOT NULL,
    kind             TEXT NOT NULL CHECK (kind IN ('direct', 'group')),
    name             TEXT,
    -- Direct conversations only: the two user ids sorted and joined by ':'.
    direct_key       TEXT,
    created_by       TEXT NOT NULL REFERENCES users (id),
    created_at       INTEGER NOT NULL,
    -- Seq of the newest message; the next message gets last_seq + 1.
    last_seq         INTEGER NOT NULL DEFAULT 0,
    last_activity_at INTEGER NOT NULL,
    CONSTRAINT conversations_direct_key_key UNIQUE (direct_key)
);

CREATE TABLE conversation_members (
    conversation_id    TEXT NOT NULL REFERENCES conversations (id) ON DELETE CASCADE,
    user_id            TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    role               TEXT NOT NULL CHECK (role IN ('owner', 'admin', 'member')),
    joined_at          INTEGER NOT NULL,
    -- unread = conversations.last_seq - last_read_seq
    last_read_seq      INTEGER NOT NULL DEFAULT 0,
    last_delivered_seq INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (conversation_id, user_id)
) WITHOUT ROWID;

CREATE INDEX conversation_members_user_id_idx ON conversation_members (user_id);

-- `n` is a stable integer key (an alias of the rowid, so VACUUM keeps it) for
-- the external-content FTS table below; `id` is the message id the API uses.
CREATE TABLE messages (
    n               INTEGER PRIMARY KEY,
    id              TEXT NOT NULL,
    conversation_id TEXT NOT NULL REFERENCES conversations (id) ON DELETE CASCADE,
    seq             INTEGER NOT NULL,
    sender_id       TEXT NOT NULL REFERENCES users (id),
    client_msg_id   TEXT,
    -- Empty once deleted (tombstone).
    body            TEXT NOT NULL,
    created_at      INTEGER NOT NULL,
    edited_at       INTEGER,
    deleted_at      INTEGER,
    CONSTRAINT messages_id_key UNIQUE (id),
    -- Also the index for history by (conversation_id, seq).
    CONSTRAINT messages_conversation_seq_key UNIQUE (conversation_id, seq)
);

-- Idempotency of sends: one message per (sender, client_msg_id).
CREATE UNIQUE INDEX messages_sender_client_msg_id_key
    ON messages (sender_id, client_msg_id) WHERE client_msg_id IS NOT NULL;

-- Retention deletes by age.
CREATE INDEX messages_created_at_idx ON messages (created_at);

-- Full-text search over message bodies, kept in step by the triggers below
-- (an edit or a tombstone replaces the indexed text; a deleted row leaves).
CREATE VIRTUAL TABLE messages_fts USING fts5 (
    body,
    content = 'messages',
    content_rowid = 'n',
    tokenize = 'unicode61 remove_diacritics 0'
);

CREATE TRIGGER messages_fts_insert AFTER INSERT ON messages BEGIN
    INSERT INTO messages_fts (rowid, body) VALUES (new.n, new.body);
END;

CREATE TRIGGER messages_fts_delete AFTER DELETE ON messages BEGIN
    INSERT INTO messages_fts (messages_fts, rowid, body) VALUES ('delete', old.n, old.body);
END;

CREATE TRIGGER messages_fts_update AFTER UPDATE OF body ON messages BEGIN
    INSERT INTO messages_fts (messages_fts, rowid, body) VALUES ('delete', old.n, old.body);
    INSERT INTO messages_fts (rowid, body) VALUES (new.n, new.body);
END;

-- Events written in the same transaction as their change; published after
-- commit and then deleted. AUTOINCREMENT: ids are never reused.
CREATE TABLE outbox (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    kind            TEXT NOT NULL,
    conversation_id TEXT,
    message_id      TEXT,
    payload         TEXT NOT NULL,
    created_at      INTEGER NOT NULL,
    -- A sweeper that took the row owns it until then.
    claimed_until   INTEGER
);

CREATE INDEX outbox_created_at_idx ON outbox (created_at);

-- Explicit contacts (one direction: user_id lists contact_id).
CREATE TABLE contacts (
    user_id    TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    contact_id TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (user_id, contact_id)
) WITHOUT ROWID;

CREATE INDEX contacts_contact_id_idx ON contacts (contact_id);

-- user_id has blocked blocked_id.
CREATE TABLE blocks (
    user_id    TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    blocked_id TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (user_id, blocked_id)
) WITHOUT ROWID;

CREATE INDEX blocks_blocked_id_idx ON blocks (blocked_id);
