-- 001_init.sql - the first Stoa schema: instance heartbeats, the bus's
-- overflow table for large notifications, room snapshots, and the outbox
-- through which applications publish into rooms.
--
-- `stoa migrate` runs this file inside one transaction (with the migration
-- lock held) and records it in stoa_schema_migrations: no BEGIN/COMMIT here.
-- Objects are created in the first schema of the connection's search_path
-- (normally public).

-- One row per running Stoa instance: written at start-up, refreshed by a
-- heartbeat. An instance whose last_seen is too old is dead; its peers are
-- announced as having left by the surviving instances.
CREATE TABLE stoa_instances (
    id         text        PRIMARY KEY,
    started_at timestamptz NOT NULL DEFAULT now(),
    last_seen  timestamptz NOT NULL DEFAULT now(),
    info       jsonb       NOT NULL DEFAULT '{}'::jsonb   -- version, host, listen address...
);
CREATE INDEX stoa_instances_last_seen_idx ON stoa_instances (last_seen);

-- NOTIFY payloads are limited to 8000 bytes. A bus message larger than that
-- is stored here and only its id travels in the notification; the receiving
-- instances read the row, and old rows are deleted by age.
-- bytea: the bytes are passed through exactly as the bus encoded them.
CREATE TABLE stoa_bus_payloads (
    id         bigserial   PRIMARY KEY,
    origin     text        NOT NULL,                       -- stoa_instances.id of the sender
    created_at timestamptz NOT NULL DEFAULT now(),
    payload    bytea       NOT NULL
);
CREATE INDEX stoa_bus_payloads_created_at_idx ON stoa_bus_payloads (created_at);

-- Room snapshots (documents) by version. data is zlib-compressed; size is
-- the uncompressed size in bytes.
CREATE TABLE stoa_snapshots (
    room         text        NOT NULL,
    version      bigint      NOT NULL CHECK (version >= 0),
    content_type text        NOT NULL,
    data         bytea       NOT NULL,
    size         bigint      NOT NULL CHECK (size >= 0),
    created_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (room, version)
);

-- Messages an application publishes into rooms from its own transactions.
--
-- Design: the application does NOT call NOTIFY. A NOTIFY inside the
-- application's transaction makes its COMMIT take PostgreSQL's global
-- notification lock (one for the whole server, held until the commit is
-- done), which serialises every committing transaction that has notified,
-- so a busy application would queue on it. An INSERT takes no such lock. The row
-- becomes visible only when the application's transaction commits, and
-- never if it rolls back, so a room receives exactly what was committed.
-- Stoa drains this table from its own connection (outside any application
-- transaction), e.g. DELETE ... WHERE id IN (SELECT id ... ORDER BY id
-- FOR UPDATE SKIP LOCKED LIMIT n) RETURNING ..., so that several instances
-- never deliver a row twice and rows whose ids committed out of order are
-- not skipped (a "greater than the last id seen" cursor would skip them).
CREATE TABLE stoa_outbox (
    id         bigserial   PRIMARY KEY,
    room       text        NOT NULL CHECK (room <> ''),
    data       jsonb       NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);

-- stoa_publish(room, data): queue data for delivery into room, as part of
-- the caller's transaction. Returns the outbox id. See stoa_outbox above for
-- why this inserts instead of notifying.
--   BEGIN; UPDATE documents ...; SELECT stoa_publish('doc:42', '{"saved":true}'); COMMIT;
CREATE FUNCTION stoa_publish(room text, data jsonb) RETURNS bigint
    LANGUAGE sql VOLATILE
AS $$
    INSERT INTO stoa_outbox (room, data) VALUES ($1, $2) RETURNING id;
$$;

COMMENT ON FUNCTION stoa_publish(text, jsonb) IS
    'Queue a message for a Stoa room inside the caller''s transaction (an insert into stoa_outbox, no NOTIFY); visible to Stoa only after COMMIT.';
