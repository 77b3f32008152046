//! JSON files: model manifests and training-checkpoint states. One reader and one writer for
//! every model family, so each family only maps [`JsonFileError`] into its own error type.
//!
//! Writes go through a temporary file beside the target and a rename, so a crash or a full
//! disk mid-write leaves the previous file whole.

use std::path::{Path, PathBuf};

/// Why a JSON file could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum JsonFileError {
    /// Reading, writing or renaming the file failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The text is not JSON of the expected shape (or the value could not be serialised).
    #[error("{}: not valid JSON for this file ({source})", path.display())]
    Json {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: serde_json::Error,
    },
}

impl JsonFileError {
    /// What went wrong, without the path (for errors that carry the path themselves).
    pub fn cause(&self) -> String {
        match self {
            Self::Io { source, .. } => source.to_string(),
            Self::Json { source, .. } => format!("not valid JSON for this file ({source})"),
        }
    }

    /// The file concerned.
    pub fn path(&self) -> &Path {
        match self {
            Self::Io { path, .. } | Self::Json { path, .. } => path,
        }
    }
}

/// `path` with `.tmp` appended: where a file is written before it is renamed into place.
pub fn tmp_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".tmp");
    PathBuf::from(name)
}

/// Reads `path` as JSON of type `T`.
pub fn read<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, JsonFileError> {
    let text = std::fs::read_to_string(path).map_err(|source| JsonFileError::Io {
        path: path.to_owned(),
        source,
    })?;
    serde_json::from_str(&text).map_err(|source| JsonFileError::Json {
        path: path.to_owned(),
        source,
    })
}

/// Writes `value` to `path` as pretty JSON with a final newline, through a temporary file and
/// a rename.
pub fn write<T: serde::Serialize + ?Sized>(path: &Path, value: &T) -> Result<(), JsonFileError> {
    let text = serde_json::to_string_pretty(value).map_err(|source| JsonFileError::Json {
        path: path.to_owned(),
        source,
    })?;
    let tmp = tmp_path(path);
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| JsonFileError::Io { path, source }
    };
    std::fs::write(&tmp, text + "\n").map_err(io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    struct Doc {
        name: String,
        steps: u64,
    }

    #[test]
    fn a_written_file_reads_back_and_leaves_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = dir.path().join("m.json");
        let doc = Doc {
            name: "x".into(),
            steps: 3,
        };
        write(&path, &doc).unwrap_or_else(|e| panic!("{e}"));
        let back: Doc = read(&path).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(back, doc);
        assert!(!tmp_path(&path).exists());
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{e}"));
        assert!(text.ends_with("}\n"), "{text}");
    }

    #[test]
    fn missing_and_malformed_files_name_the_file_and_the_cause() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let missing = dir.path().join("none.json");
        match read::<Doc>(&missing) {
            Err(e @ JsonFileError::Io { .. }) => assert_eq!(e.path(), missing),
            other => panic!("expected an I/O error, got {other:?}"),
        }
        let bad = dir.path().join("bad.json");
        std::fs::write(&bad, b"{ \"name\": 3").unwrap_or_else(|e| panic!("{e}"));
        match read::<Doc>(&bad) {
            Err(e @ JsonFileError::Json { .. }) => {
                assert_eq!(e.path(), bad);
                assert!(e.to_string().contains("bad.json"), "{e}");
            }
            other => panic!("expected a JSON error, got {other:?}"),
        }
        // A write into a folder that does not exist fails cleanly too.
        let nowhere = dir.path().join("no/such/dir/m.json");
        let doc = Doc {
            name: String::new(),
            steps: 0,
        };
        assert!(matches!(
            write(&nowhere, &doc),
            Err(JsonFileError::Io { .. })
        ));
    }
}
