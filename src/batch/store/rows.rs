//! The rows the store reads and writes.

/// A batch as stored (the `batches` table).
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct BatchRow {
    pub id: String,
    pub owner: String,
    pub owner_name: String,
    pub status: String,
    pub endpoint: String,
    pub model: String,
    pub cluster: Option<String>,
    pub framework: Option<String>,
    pub input_file_id: Option<String>,
    pub input_file_path: Option<String>,
    pub output_folder_path: Option<String>,
    pub result_folder: Option<String>,
    pub completion_window: String,
    /// JSON object, as the client sent it.
    pub metadata: Option<String>,
    /// JSON: OpenAI's `errors` list object.
    pub errors: Option<String>,
    pub total: i64,
    pub completed: i64,
    pub failed: i64,
    pub prompt_tokens: i64,
    pub completion_tokens: i64,
    pub output_file_id: Option<String>,
    pub error_file_id: Option<String>,
    pub created_ms: i64,
    pub in_progress_at: Option<i64>,
    pub expires_at: i64,
    pub finalizing_at: Option<i64>,
    pub completed_at: Option<i64>,
    pub failed_at: Option<i64>,
    pub expired_at: Option<i64>,
    pub cancelling_at: Option<i64>,
    pub cancelled_at: Option<i64>,
    pub ended_ms: Option<i64>,
}

impl BatchRow {
    pub fn created_at(&self) -> i64 {
        self.created_ms / 1000
    }

    /// Door A: submitted with a path, results written to a folder.
    pub fn is_path_based(&self) -> bool {
        self.input_file_path.is_some()
    }
}

/// What a new batch is stored with.
#[derive(Debug, Clone)]
pub struct NewBatch {
    pub id: String,
    pub owner: String,
    pub owner_name: String,
    pub status: &'static str,
    pub endpoint: String,
    pub model: String,
    pub cluster: Option<String>,
    pub framework: Option<String>,
    pub input_file_id: Option<String>,
    pub input_file_path: Option<String>,
    pub output_folder_path: Option<String>,
    pub result_folder: Option<String>,
    pub input_key: String,
    pub completion_window: String,
    pub metadata: Option<String>,
    pub errors: Option<String>,
    pub total: i64,
    pub failed: i64,
    pub created_ms: i64,
    pub in_progress_at: Option<i64>,
    pub expires_at: i64,
    pub failed_at: Option<i64>,
}

/// An uploaded (or produced) file's record; its bytes are `files/<id>` in the state directory.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct FileRow {
    pub id: String,
    pub owner: String,
    pub purpose: String,
    pub filename: String,
    pub bytes: i64,
    pub created_ms: i64,
    pub expires_at: Option<i64>,
}

/// A validated line, as it will be sent: `body` is the request body the backend gets.
#[derive(Debug, Clone)]
pub struct StoredLine {
    pub line_no: i64,
    pub custom_id: String,
    pub url: String,
    pub body: String,
}

/// A line the worker has claimed.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ClaimedLine {
    pub line_no: i64,
    pub custom_id: String,
    pub url: String,
    pub body: String,
}

/// How a line ended: its output (or error-file) line and the tokens it used.
#[derive(Debug, Clone)]
pub struct LineOutcome {
    pub failed: bool,
    /// One JSON line of `results.jsonl` / `errors.jsonl`, without the newline.
    pub result: String,
    pub prompt_tokens: i64,
    pub completion_tokens: i64,
}
