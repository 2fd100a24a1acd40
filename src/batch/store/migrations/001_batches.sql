-- The batch job store, version 1. Plain SQL that SQLite and PostgreSQL both read: TEXT and
-- BIGINT columns, `$n` parameters in the queries, no engine-specific types.

CREATE TABLE IF NOT EXISTS files (
    id TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    purpose TEXT NOT NULL,
    filename TEXT NOT NULL,
    bytes BIGINT NOT NULL,
    created_ms BIGINT NOT NULL,
    expires_at BIGINT
);
CREATE INDEX IF NOT EXISTS files_by_owner ON files (owner, created_ms);

CREATE TABLE IF NOT EXISTS batches (
    id TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    -- The owner's username, for logs and metrics (`owner` is the stable identity id).
    owner_name TEXT NOT NULL,
    status TEXT NOT NULL,
    endpoint TEXT NOT NULL,
    model TEXT NOT NULL,
    cluster TEXT,
    framework TEXT,
    input_file_id TEXT,
    input_file_path TEXT,
    output_folder_path TEXT,
    result_folder TEXT,
    -- The input (a file id or a canonical path): one active batch per input.
    input_key TEXT NOT NULL,
    completion_window TEXT NOT NULL,
    metadata TEXT,
    errors TEXT,
    total BIGINT NOT NULL DEFAULT 0,
    completed BIGINT NOT NULL DEFAULT 0,
    failed BIGINT NOT NULL DEFAULT 0,
    prompt_tokens BIGINT NOT NULL DEFAULT 0,
    completion_tokens BIGINT NOT NULL DEFAULT 0,
    output_file_id TEXT,
    error_file_id TEXT,
    created_ms BIGINT NOT NULL,
    in_progress_at BIGINT,
    expires_at BIGINT NOT NULL,
    finalizing_at BIGINT,
    completed_at BIGINT,
    failed_at BIGINT,
    expired_at BIGINT,
    cancelling_at BIGINT,
    cancelled_at BIGINT,
    -- Which replica finalizes the batch, until when (ms): one writes its results.
    finalizer_until BIGINT,
    -- When it reached its final status, in milliseconds (for durations and rates).
    ended_ms BIGINT
);
CREATE INDEX IF NOT EXISTS batches_by_owner ON batches (owner, created_ms);
CREATE INDEX IF NOT EXISTS batches_by_status ON batches (status);

-- One row a line. `state`: pending → running → done; `result` is the line's output or
-- error-file line, written in the same transaction that marks it done (exactly once).
CREATE TABLE IF NOT EXISTS lines (
    batch_id TEXT NOT NULL,
    line_no BIGINT NOT NULL,
    custom_id TEXT NOT NULL,
    url TEXT NOT NULL,
    body TEXT NOT NULL,
    state TEXT NOT NULL,
    -- The replica sending a running line, and until when its lease holds (ms): a replica
    -- that dies stops renewing, and another takes the line when the lease runs out.
    worker TEXT,
    lease_until BIGINT,
    failed BIGINT NOT NULL DEFAULT 0,
    result TEXT,
    PRIMARY KEY (batch_id, line_no)
);
CREATE INDEX IF NOT EXISTS lines_by_state ON lines (batch_id, state, line_no);
CREATE UNIQUE INDEX IF NOT EXISTS lines_by_custom_id ON lines (batch_id, custom_id);
CREATE INDEX IF NOT EXISTS lines_by_worker ON lines (worker, state);
