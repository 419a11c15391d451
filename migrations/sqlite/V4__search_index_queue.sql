-- Full-text indexing leaves the persister's transaction. A new message only
-- queues its row number here (an append to a small table); a background
-- indexer moves queued rows into messages_fts in larger transactions, and a
-- search first indexes whatever is still queued, so a search always sees
-- every committed message. Larger FTS5 transactions mean fewer, larger
-- segments and far less merge work than one segment per persister batch.

CREATE TABLE messages_fts_queue (
    n INTEGER PRIMARY KEY
);

DROP TRIGGER messages_fts_insert;
DROP TRIGGER messages_fts_delete;
DROP TRIGGER messages_fts_update;

CREATE TRIGGER messages_fts_insert AFTER INSERT ON messages BEGIN
    INSERT INTO messages_fts_queue (n) VALUES (new.n);
END;

-- A row still queued is not in the index: leaving, it leaves the queue; an
-- edit needs nothing (the indexer reads the body when it gets there).
CREATE TRIGGER messages_fts_delete AFTER DELETE ON messages BEGIN
    INSERT INTO messages_fts (messages_fts, rowid, body)
        SELECT 'delete', old.n, old.body
        WHERE NOT EXISTS (SELECT 1 FROM messages_fts_queue WHERE n = old.n);
    DELETE FROM messages_fts_queue WHERE n = old.n;
END;

CREATE TRIGGER messages_fts_update AFTER UPDATE OF body ON messages
WHEN NOT EXISTS (SELECT 1 FROM messages_fts_queue WHERE n = old.n) BEGIN
    INSERT INTO messages_fts (messages_fts, rowid, body) VALUES ('delete', old.n, old.body);
    INSERT INTO messages_fts (rowid, body) VALUES (new.n, new.body);
END;
