//! Path-based batches (door A) confined to the configured roots.
//!
//! A gateway that reads and writes files named by users on a shared filesystem is a confused
//! deputy waiting to happen: it runs as its own account, which may read what the user cannot.
//! So a path is checked lexically against the user's roots (with `{user}` replaced) before the
//! filesystem is touched, then canonicalized (symlinks followed) and checked again. Whatever
//! fails, a path outside the roots gets the same answer whether or not it exists.

use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Component, Path, PathBuf};

use gateway_plugin_api::{ApiError, Principal};

use crate::config::{BatchConfig, USER_PLACEHOLDER};

const MAX_PATH: usize = 4096;

/// The local account name of a principal: its username before `@`, when it is a plain name
/// (anything else could not be a path component and gets no roots at all).
pub fn local_user(principal: &Principal) -> Option<&str> {
    let name = principal.username.split('@').next()?;
    let plain = !name.is_empty()
        && name.len() <= 64
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || b"._-".contains(&c));
    plain.then_some(name)
}

fn roots_of(roots: &[String], user: &str) -> Vec<PathBuf> {
    roots
        .iter()
        .map(|r| PathBuf::from(r.replace(USER_PLACEHOLDER, user)))
        .collect()
}

fn refused(what: &str, raw: &str, roots: &[PathBuf]) -> ApiError {
    let list: Vec<String> = roots.iter().map(|r| r.display().to_string()).collect();
    ApiError::permission_denied(format!(
        "The {what} `{raw}` is not one you may use: it does not exist, or it is not inside \
         your allowed roots ({}).",
        list.join(", ")
    ))
}

/// Absolute, no `.` or `..`, no NUL, bounded: else a 400 before anything else.
fn plain_absolute(param: &'static str, raw: &str) -> Result<PathBuf, ApiError> {
    let path = PathBuf::from(raw);
    let bad = |why: &str| {
        ApiError::new(
            400,
            "invalid_request_error",
            "invalid_path",
            format!("`{param}` {why}."),
        )
        .with_param(param)
    };
    if raw.len() > MAX_PATH || raw.contains('\0') {
        return Err(bad("is not a usable path"));
    }
    if !path.is_absolute() {
        return Err(bad("must be an absolute path"));
    }
    if path
        .components()
        .any(|c| matches!(c, Component::ParentDir | Component::CurDir))
    {
        return Err(bad("must not contain `.` or `..` components"));
    }
    Ok(path)
}

/// Lexically inside a root, then canonically inside the same root.
fn confine(what: &str, raw: &str, path: &Path, roots: &[PathBuf]) -> Result<PathBuf, ApiError> {
    if roots.is_empty() {
        return Err(ApiError::permission_denied(format!(
            "Path-based batches are not enabled on this gateway (no {what} roots are configured); \
             upload the file with the Files API instead."
        )));
    }
    let root = roots
        .iter()
        .find(|r| path.starts_with(r))
        .ok_or_else(|| refused(what, raw, roots))?;
    let real_root = root.canonicalize().map_err(|_| refused(what, raw, roots))?;
    let real = path.canonicalize().map_err(|_| refused(what, raw, roots))?;
    if !real.starts_with(&real_root) {
        return Err(refused(what, raw, roots));
    }
    Ok(real)
}

/// The input file a user may have read: canonical, a regular file inside their roots, and
/// theirs when `require_owner` is set.
pub fn input_file(config: &BatchConfig, user: &str, raw: &str) -> Result<PathBuf, ApiError> {
    let path = plain_absolute("input_file_path", raw)?;
    let roots = roots_of(&config.allowed_input_roots, user);
    let real = confine("input file", raw, &path, &roots)?;
    let meta = std::fs::metadata(&real).map_err(|_| refused("input file", raw, &roots))?;
    if !meta.is_file() {
        return Err(refused("input file", raw, &roots));
    }
    if config.require_owner {
        let owner = nix::unistd::User::from_name(user).ok().flatten();
        if owner.is_none_or(|u| u.uid.as_raw() != meta.uid()) {
            return Err(ApiError::permission_denied(format!(
                "The input file `{raw}` does not belong to the account `{user}`; this gateway \
                 reads only files their owner submits."
            )));
        }
    }
    Ok(real)
}

/// The folder results go into: canonical, an existing directory inside the user's roots.
pub fn output_folder(
    config: &BatchConfig,
    user: &str,
    raw: Option<&str>,
) -> Result<PathBuf, ApiError> {
    let raw = match (raw, &config.default_output_folder) {
        (Some(raw), _) => raw.to_string(),
        (None, Some(default)) => default.replace(USER_PLACEHOLDER, user),
        (None, None) => {
            return Err(ApiError::new(
                400,
                "invalid_request_error",
                "missing_required_parameter",
                "`output_folder_path` is required: this gateway has no default output folder."
                    .into(),
            )
            .with_param("output_folder_path"))
        }
    };
    let path = plain_absolute("output_folder_path", &raw)?;
    let roots = roots_of(&config.allowed_output_roots, user);
    let real = confine("output folder", &raw, &path, &roots)?;
    if !real.is_dir() {
        return Err(refused("output folder", &raw, &roots));
    }
    Ok(real)
}

/// `<input-stem>_<model-last-part>_<batch_id>`, each part reduced to plain characters.
pub fn result_folder_name(input: &Path, model: &str, batch_id: &str) -> String {
    let plain = |s: &str| -> String {
        s.chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                    c
                } else {
                    '_'
                }
            })
            .take(100)
            .collect()
    };
    let stem = input
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let model = model.rsplit('/').next().unwrap_or(model);
    format!("{}_{}_{batch_id}", plain(&stem), plain(model))
}

/// Creates the result folder: new (an existing name, or a symlink in its place, is refused).
pub fn create_result_folder(parent: &Path, name: &str, file_mode: u32) -> std::io::Result<PathBuf> {
    let path = parent.join(name);
    // Directory bits: the file mode plus search wherever it grants read.
    let mode = file_mode | ((file_mode & 0o444) >> 2);
    std::fs::DirBuilder::new().mode(mode).create(&path)?;
    Ok(path)
}

/// Before writing results: the folder is still a real directory (not swapped for a symlink)
/// at the canonical place it was created.
pub fn still_ours(folder: &Path) -> bool {
    let plain_dir = std::fs::symlink_metadata(folder).is_ok_and(|m| m.is_dir());
    plain_dir && folder.canonicalize().is_ok_and(|real| real == folder)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn principal(name: &str) -> Principal {
        Principal {
            username: name.into(),
            ..Principal::default()
        }
    }

    #[test]
    fn local_user_is_a_plain_name_before_the_at() {
        assert_eq!(local_user(&principal("alice@uchicago.edu")), Some("alice"));
        for bad in ["../x@a", "a/b@c", ".@x", "@x", ""] {
            assert_eq!(local_user(&principal(bad)), None, "{bad}");
        }
    }

    #[test]
    fn result_folder_names_are_plain() {
        let name = result_folder_name(
            Path::new("/h/in put.jsonl"),
            "meta-llama/Meta-Llama-3-8B-Instruct",
            "batch_1",
        );
        assert_eq!(name, "in_put_Meta-Llama-3-8B-Instruct_batch_1");
    }
}
