-- Chat: conversations, members with read/delivered watermarks, messages with
-- a gapless per-conversation seq, the outbox, contacts, blocks, full-text
-- search and presence.

-- When the user was last seen online (presence).
ALTER TABLE users ADD COLUMN last_seen_at TIMESTAMPTZ;

-- Lower-cased display name for case-insensitive user search, written by the
-- application like the other *_lower columns, so the rule is the same on both
-- backends. Whatever changes display_name must keep it in step.
ALTER TABLE users ADD COLUMN display_name_lower TEXT NOT NULL DEFAULT '';
UPDATE users SET display_name_lower = lower(display_name);
ALTER TABLE users ALTER COLUMN display_name_lower DROP DEFAULT;

CREATE TABLE conversations (
    id               TEXT PRIMARY KEY,
    kind             TEXT NOT NULL CHECK (kind IN ('direct', 'group')),
    name             TEXT,
    -- Direct conversations only: the two user ids sorted and joined by ':'.
    direct_key       TEXT,
    created_by       TEXT NOT NULL REFERENCES users (id),
    created_at       TIMESTAMPTZ NOT NULL,
    -- Seq of the newest message; the next message gets last_seq + 1. Writers
    -- of messages lock this row, which serialises seq assignment.
    last_seq         BIGINT NOT NULL DEFAULT 0,
    last_activity_at TIMESTAMPTZ NOT NULL,
    CONSTRAINT conversations_direct_key_key UNIQUE (direct_key)
);

CREATE TABLE conversation_members (
    conversation_id    TEXT NOT NULL REFERENCES conversations (id) ON DELETE CASCADE,
    user_id            TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    role               TEXT NOT NULL CHECK (role IN ('owner', 'admin', 'member')),
    joined_at          TIMESTAMPTZ NOT NULL,
    -- unread = conversations.last_seq - last_read_seq
    last_read_seq      BIGINT NOT NULL DEFAULT 0,
    last_delivered_seq BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (conversation_id, user_id)
);

CREATE INDEX conversation_members_user_id_idx ON conversation_members (user_id);

CREATE TABLE messages (
    id              TEXT PRIMARY KEY,
    conversation_id TEXT NOT NULL REFERENCES conversations (id) ON DELETE CASCADE,
    seq             BIGINT NOT NULL,
    sender_id       TEXT NOT NULL REFERENCES users (id),
    client_msg_id   TEXT,
    -- Empty once deleted (tombstone), so a deleted message matches no search.
    body            TEXT NOT NULL,
    created_at      TIMESTAMPTZ NOT NULL,
    edited_at       TIMESTAMPTZ,
    deleted_at      TIMESTAMPTZ,
    -- 'simple': language-neutral words, lower-cased, no stemming.
    search          TSVECTOR GENERATED ALWAYS AS (to_tsvector('simple', body)) STORED,
    -- Also the index for history by (conversation_id, seq).
    CONSTRAINT messages_conversation_seq_key UNIQUE (conversation_id, seq),
    -- Idempotency of sends (NULL keys never clash).
    CONSTRAINT messages_sender_client_msg_id_key UNIQUE (sender_id, client_msg_id)
);

CREATE INDEX messages_search_idx ON messages USING GIN (search);

-- Retention deletes by age.
CREATE INDEX messages_created_at_idx ON messages (created_at);

-- Events written in the same transaction as their change; published after
-- commit and then deleted.
CREATE TABLE outbox (
    id              BIGSERIAL PRIMARY KEY,
    kind            TEXT NOT NULL,
    conversation_id TEXT,
    message_id      TEXT,
    payload         TEXT NOT NULL,
    created_at      TIMESTAMPTZ NOT NULL,
    -- A sweeper that took the row owns it until then.
    claimed_until   TIMESTAMPTZ
);

CREATE INDEX outbox_created_at_idx ON outbox (created_at);

-- Explicit contacts (one direction: user_id lists contact_id).
CREATE TABLE contacts (
    user_id    TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    contact_id TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    created_at TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (user_id, contact_id)
);

CREATE INDEX contacts_contact_id_idx ON contacts (contact_id);

-- user_id has blocked blocked_id.
CREATE TABLE blocks (
    user_id    TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    blocked_id TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    created_at TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (user_id, blocked_id)
);

CREATE INDEX blocks_blocked_id_idx ON blocks (blocked_id);
