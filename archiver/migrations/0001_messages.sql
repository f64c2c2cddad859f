-- natter archive: every stored room message of the CHAT stream, exactly once.
--
-- _id is the message's stream sequence (its protocol `_id`). A message is archived once per
-- _id (primary key) and once per (room, uuid) (unique constraint), so redelivery, racing
-- replicas and client retries after the stream's dedupe window never add a second row;
-- inserts use ON CONFLICT DO NOTHING, which covers both.
CREATE TABLE messages (
    _id         bigint      PRIMARY KEY,
    -- room name (decoded from the subject token room.<token>)
    room        text        NOT NULL,
    -- the client's idempotency key; NULL when absent (NULLs never conflict)
    uuid        text,
    kind        text        NOT NULL CHECK (kind IN ('text', 'image', 'file', 'system')),
    user_id     text,
    user_name   text,
    -- the stored JSON-RPC object, byte for byte as the stream holds it; the object clients
    -- are delivered is this plus "_id": "<_id>"
    msg         json        NOT NULL,
    -- params.date as the client sent it (a string's value or a number's digits)
    client_date text,
    -- when the stream stored the message
    server_time timestamptz NOT NULL,
    -- when the archiver wrote the row (transaction start)
    archived_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT messages_room_uuid_key UNIQUE (room, uuid)
);

-- "room after _id L, ascending" and "room before _id B, descending": one btree on
-- (room, _id) serves both, scanned forwards or backwards.
CREATE INDEX messages_room_id_idx ON messages (room, _id);
