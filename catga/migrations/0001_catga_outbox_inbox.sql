-- Catga's transactional outbox and inbox (feature `postgres`, see the
-- `catga::outbox` module). Idempotent: Catga runs it when an instance
-- starts with PostgreSQL configured (under an advisory lock, so instances
-- starting together do not race); run it yourself instead with your own
-- migration tool and `Builder::postgres_migrate(false)`. The tables live in
-- the connection's schema (its search_path).

-- Messages written by a transaction, published by the relay once it
-- committed. One row per message, encoded as it goes on the wire.
CREATE TABLE IF NOT EXISTS catga_outbox (
    seq            bigserial   PRIMARY KEY,
    -- Ordering: rows of one key are published in commit order, one at a
    -- time; `bucket` (a stable hash of the key, 0..63) is the unit a relay
    -- locks.
    key            text        NOT NULL,
    bucket         smallint    NOT NULL,
    kind           text        NOT NULL CHECK (kind IN ('send', 'publish')),
    subject        text        NOT NULL,
    -- The codec's content type; NULL for JSON.
    content_type   text,
    durable        boolean     NOT NULL DEFAULT false,
    message_id     text        NOT NULL,
    correlation_id text        NOT NULL,
    causation_id   text,
    traceparent    text,
    tracestate     text,
    payload        bytea       NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now(),
    -- Not before (a retry's backoff).
    due_at         timestamptz NOT NULL DEFAULT now(),
    attempts       integer     NOT NULL DEFAULT 0,
    last_error     text,
    -- Set once published (or, with `dropped`, given up as undeliverable);
    -- such rows are deleted after the outbox retention.
    sent_at        timestamptz,
    dropped        boolean     NOT NULL DEFAULT false
);

-- What the relay reads: each bucket's unsent rows in order.
CREATE INDEX IF NOT EXISTS catga_outbox_unsent ON catga_outbox (bucket, seq) WHERE sent_at IS NULL;
-- Rows waiting to be tried again hold back the later rows of their key.
CREATE INDEX IF NOT EXISTS catga_outbox_waiting ON catga_outbox (key, seq) WHERE sent_at IS NULL AND attempts > 0;
-- What pruning reads.
CREATE INDEX IF NOT EXISTS catga_outbox_sent ON catga_outbox (sent_at) WHERE sent_at IS NOT NULL;

-- Messages handled: one row per (handler, message id), written in the
-- handling's transaction, so a copy of the message finds it and changes
-- nothing. `reply` is the handler's reply as JSON (NULL: none).
CREATE TABLE IF NOT EXISTS catga_inbox (
    consumer   text        NOT NULL,
    message_id text        NOT NULL,
    reply      bytea,
    handled_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, message_id)
);

CREATE INDEX IF NOT EXISTS catga_inbox_handled ON catga_inbox (handled_at);
