//! Configuration errors.
//!
//! Every variant names where the problem is (a file, a line, or a field path such as
//! `providers[0].keys[1].priority`) and never carries a configured value that could be a secret:
//! messages are built from field names, variable names and numbers only.

use std::fmt;
use std::io;
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    /// The text is not valid YAML (or TOML, as `format` says).
    #[error("{}", SyntaxDisplay { format, file: file.as_ref(), message, line: *line, column: *column })]
    Syntax {
        /// `YAML` or `TOML`.
        format: &'static str,
        /// The file, when the text came from one.
        file: Option<PathBuf>,
        message: String,
        /// 1-based, when the parser knows it.
        line: Option<usize>,
        /// 1-based, when the parser knows it.
        column: Option<usize>,
    },

    /// One field is wrong. Displayed as `path: message`.
    #[error("{path}: {message}")]
    Invalid { path: String, message: String },

    /// Several problems found in one pass, so the user can fix them all at once; one per line.
    #[error("{}", ManyDisplay(errors))]
    Many { errors: Vec<ConfigError> },
}

impl ConfigError {
    pub(crate) fn invalid(path: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError::Invalid {
            path: path.into(),
            message: message.into(),
        }
    }

    /// `Invalid` for one problem, `Many` for several. `errors` must not be empty.
    pub(crate) fn from_issues(mut errors: Vec<ConfigError>) -> Self {
        if errors.len() == 1 {
            errors.remove(0)
        } else {
            ConfigError::Many { errors }
        }
    }

    /// The individual errors: itself, or each of `Many`'s.
    pub fn errors(&self) -> Vec<&ConfigError> {
        match self {
            ConfigError::Many { errors } => errors.iter().collect(),
            other => vec![other],
        }
    }

    /// The field path of an `Invalid` error.
    pub fn path(&self) -> Option<&str> {
        match self {
            ConfigError::Invalid { path, .. } => Some(path),
            _ => None,
        }
    }

    /// Attach the file name to a syntax error that came from `load_file`.
    pub(crate) fn in_file(self, path: &std::path::Path) -> Self {
        match self {
            ConfigError::Syntax {
                format,
                file: None,
                message,
                line,
                column,
            } => ConfigError::Syntax {
                format,
                file: Some(path.to_path_buf()),
                message,
                line,
                column,
            },
            other => other,
        }
    }

    pub(crate) fn from_yaml(err: &serde_yaml::Error) -> Self {
        let full = err.to_string();
        let (line, column) = match err.location() {
            Some(loc) => (Some(loc.line()), Some(loc.column())),
            None => (None, None),
        };
        // serde_yaml embeds " at line L column C" in its message; we show the location
        // ourselves, in the `file:line:column:` form editors understand.
        let message = match (line, column) {
            (Some(l), Some(c)) => full.replacen(&format!(" at line {l} column {c}"), "", 1),
            _ => full,
        };
        ConfigError::Syntax {
            format: "YAML",
            file: None,
            message,
            line,
            column,
        }
    }

    /// A TOML syntax error: the parser's message without its quote of the source line (which
    /// could hold a secret), and the line and column of where it points.
    pub(crate) fn from_toml(err: &toml::de::Error, text: &str) -> Self {
        let (line, column) = match err.span() {
            Some(span) => {
                let before = &text[..span.start.min(text.len())];
                let line = before.matches('\n').count() + 1;
                let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
                (Some(line), Some(column))
            }
            None => (None, None),
        };
        ConfigError::Syntax {
            format: "TOML",
            file: None,
            message: err.message().trim_end().replace('\n', "; "),
            line,
            column,
        }
    }
}

struct SyntaxDisplay<'a> {
    format: &'a str,
    file: Option<&'a PathBuf>,
    message: &'a str,
    line: Option<usize>,
    column: Option<usize>,
}

impl fmt::Display for SyntaxDisplay<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(file) = self.file {
            write!(f, "{}:", file.display())?;
        }
        match (self.line, self.column) {
            (Some(l), Some(c)) => write!(f, "{l}:{c}: ")?,
            _ if self.file.is_some() => f.write_str(" ")?,
            _ => {}
        }
        write!(f, "invalid {}: {}", self.format, self.message)
    }
}

struct ManyDisplay<'a>(&'a [ConfigError]);

impl fmt::Display for ManyDisplay<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}
