//! The token file, `~/.globus/app/<client_id>/<app_name>/tokens.json`, in the layout of the
//! Globus Python SDK's `JSONTokenStorage` (format 2.0, namespace `DEFAULT`, one entry per
//! resource server) that the reference Python script writes: a login made with either tool
//! serves the other, and entries for other resource servers are kept as they are.
//!
//! The directory is 0700 and the file 0600, written to a temporary file and renamed, so a
//! reader never sees half a file. Every read-refresh-write holds an exclusive lock
//! (`flock` on a lock file beside it), so concurrent calls neither corrupt the file nor
//! refresh at once.

use std::fs::{DirBuilder, File, OpenOptions, Permissions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use crate::settings::Settings;
use crate::Fail;

const NAMESPACE: &str = "DEFAULT";

/// Takes the object under `key` out of `map` (an empty one when missing or not an object).
fn take_object(map: &mut Map<String, Value>, key: &str) -> Map<String, Value> {
    match map.remove(key) {
        Some(Value::Object(m)) => m,
        _ => Map::new(),
    }
}

/// One resource server's tokens, as the Python SDK stores them.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Tokens {
    pub resource_server: String,
    #[serde(default)]
    pub identity_id: Option<String>,
    pub scope: String,
    pub access_token: String,
    #[serde(default)]
    pub refresh_token: Option<String>,
    pub expires_at_seconds: i64,
    #[serde(default = "bearer")]
    pub token_type: String,
}

fn bearer() -> String {
    "Bearer".into()
}

/// A token goes into a shell's `$(...)` and an HTTP header: visible ASCII, no spaces, bounded.
pub fn sane_token(token: &str) -> bool {
    !token.is_empty() && token.len() <= 4096 && token.bytes().all(|b| b.is_ascii_graphic())
}

/// The user's home: `$HOME`, else the password database.
pub fn home() -> Result<PathBuf, Fail> {
    if let Some(h) = std::env::var_os("HOME").filter(|h| !h.is_empty()) {
        return Ok(PathBuf::from(h));
    }
    nix::unistd::User::from_uid(nix::unistd::getuid())
        .ok()
        .flatten()
        .map(|u| u.dir)
        .ok_or_else(|| Fail::Usage("cannot find your home directory (HOME is not set)".into()))
}

pub struct TokenStore {
    dir: PathBuf,
    file: PathBuf,
    resource_server: String,
}

/// The store while this process holds its lock.
pub struct Locked<'a> {
    store: &'a TokenStore,
    _lock: Flock<File>,
}

fn io_fail(what: &str, path: &Path, e: impl std::fmt::Display) -> Fail {
    Fail::Failed(format!("{what} {}: {e}", path.display()))
}

impl TokenStore {
    pub fn new(settings: &Settings) -> Result<TokenStore, Fail> {
        let dir = home()?
            .join(".globus")
            .join("app")
            .join(&settings.client_id)
            .join(&settings.app_name);
        Ok(TokenStore {
            file: dir.join("tokens.json"),
            dir,
            resource_server: settings.resource_server.clone(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.file
    }

    /// Creates the directory (0700) if needed and takes the exclusive lock.
    pub fn lock(&self) -> Result<Locked<'_>, Fail> {
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.dir)
            .map_err(|e| io_fail("cannot create", &self.dir, e))?;
        // An existing directory keeps its mode through `create`: tighten it.
        let mode = std::fs::metadata(&self.dir)
            .map_err(|e| io_fail("cannot read", &self.dir, e))?
            .permissions()
            .mode();
        if mode & 0o077 != 0 {
            std::fs::set_permissions(&self.dir, Permissions::from_mode(0o700))
                .map_err(|e| io_fail("cannot restrict", &self.dir, e))?;
        }
        let lock_path = self.dir.join(".tokens.json.lock");
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&lock_path)
            .map_err(|e| io_fail("cannot open", &lock_path, e))?;
        let lock = Flock::lock(file, FlockArg::LockExclusive)
            .map_err(|(_, e)| io_fail("cannot lock", &lock_path, e))?;
        Ok(Locked {
            store: self,
            _lock: lock,
        })
    }
}

impl Locked<'_> {
    /// The whole file, or `None` when there is none.
    fn read_document(&self) -> Result<Option<Value>, Fail> {
        let path = &self.store.file;
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_fail("cannot read", path, e)),
        };
        if let Ok(meta) = std::fs::metadata(path) {
            if meta.permissions().mode() & 0o077 != 0 {
                eprintln!(
                    "warning: {} was readable by others; made it private (0600)",
                    path.display()
                );
                let _ = std::fs::set_permissions(path, Permissions::from_mode(0o600));
            }
        }
        let damaged = |why: String| {
            Fail::Login(format!(
                "the token file {} is damaged ({why}); run `inference-auth-token authenticate --force`",
                path.display()
            ))
        };
        let doc: Value = serde_json::from_str(&text).map_err(|e| damaged(e.to_string()))?;
        if !doc.is_object() || doc.get("data").is_some_and(|d| !d.is_object()) {
            return Err(damaged("not a token storage document".into()));
        }
        Ok(Some(doc))
    }

    /// This resource server's tokens, if logged in.
    pub fn load(&self) -> Result<Option<Tokens>, Fail> {
        let Some(doc) = self.read_document()? else {
            return Ok(None);
        };
        let Some(entry) = doc
            .pointer(&format!("/data/{NAMESPACE}/{}", self.store.resource_server))
            .cloned()
        else {
            return Ok(None);
        };
        let tokens: Tokens = serde_json::from_value(entry).map_err(|e| {
            Fail::Login(format!(
                "the token file {} has a damaged entry ({e}); run `inference-auth-token authenticate --force`",
                self.store.file.display()
            ))
        })?;
        if !sane_token(&tokens.access_token) {
            return Err(Fail::Login(format!(
                "the token file {} holds a malformed access token; run `inference-auth-token authenticate --force`",
                self.store.file.display()
            )));
        }
        Ok(Some(tokens))
    }

    /// Stores this resource server's tokens, keeping every other entry of the file.
    pub fn save(&self, tokens: &Tokens) -> Result<(), Fail> {
        // A damaged file is replaced: the login that is being saved is the good state.
        let mut root = match self.read_document().ok().flatten() {
            Some(Value::Object(m)) => m,
            _ => Map::new(),
        };
        root.insert("format_version".into(), json!("2.0"));
        // The Python SDK records its version here; it reads files of any version.
        root.entry("globus-sdk.version")
            .or_insert_with(|| json!("3.0.0"));
        let mut data = take_object(&mut root, "data");
        let mut namespace = take_object(&mut data, NAMESPACE);
        namespace.insert(
            self.store.resource_server.clone(),
            serde_json::to_value(tokens).map_err(|e| Fail::Failed(e.to_string()))?,
        );
        data.insert(NAMESPACE.into(), Value::Object(namespace));
        root.insert("data".into(), Value::Object(data));
        let doc = Value::Object(root);
        self.write_document(&doc)
    }

    /// Removes this resource server's entry (the file when nothing else is left); returns
    /// the tokens it held, if they could be read.
    pub fn forget(&self) -> Result<Option<Tokens>, Fail> {
        let held = self.load().ok().flatten();
        let doc = self.read_document().ok().flatten();
        let others = doc.and_then(|mut d| {
            let data = d.get_mut("data")?.as_object_mut()?;
            let namespace = data.get_mut(NAMESPACE)?.as_object_mut()?;
            namespace.remove(&self.store.resource_server);
            let rest = !namespace.is_empty() || data.len() > 1;
            rest.then_some(d)
        });
        match others {
            Some(d) => self.write_document(&d)?,
            None => match std::fs::remove_file(&self.store.file) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_fail("cannot delete", &self.store.file, e)),
            },
        }
        Ok(held)
    }

    /// Writes the whole file atomically: a private temporary file, synced, renamed over.
    fn write_document(&self, doc: &Value) -> Result<(), Fail> {
        let tmp = self
            .store
            .dir
            .join(format!(".tokens.json.{}.tmp", std::process::id()));
        let _ = std::fs::remove_file(&tmp);
        let text = serde_json::to_string_pretty(doc).map_err(|e| Fail::Failed(e.to_string()))?;
        let written = (|| -> std::io::Result<()> {
            let mut f = OpenOptions::new()
                .create_new(true)
                .write(true)
                .mode(0o600)
                .open(&tmp)?;
            f.write_all(text.as_bytes())?;
            f.write_all(b"\n")?;
            f.sync_all()?;
            std::fs::rename(&tmp, &self.store.file)?;
            File::open(&self.store.dir)?.sync_all()
        })();
        if let Err(e) = written {
            let _ = std::fs::remove_file(&tmp);
            return Err(io_fail("cannot write", &self.store.file, e));
        }
        Ok(())
    }
}
