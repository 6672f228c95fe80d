//! Parsing of `--comN SPEC`.

use std::path::PathBuf;

/// Where a COM port is connected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ComSpec {
    /// The terminal rehost runs in (raw mode, with an escape key).
    Stdio,
    /// Nothing: output dropped, no input.
    Null,
    /// Output appended to a file.
    File(PathBuf),
}

impl std::str::FromStr for ComSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "stdio" => Ok(ComSpec::Stdio),
            "null" | "none" => Ok(ComSpec::Null),
            _ => match s.split_once(':') {
                Some(("file", path)) if !path.is_empty() => Ok(ComSpec::File(PathBuf::from(path))),
                Some(("file", _)) => Err(format!(
                    "{s:?}: file: needs a path, e.g. file:/tmp/com1.log"
                )),
                _ => Err(format!(
                    "{s:?} is not a COM port backend; use stdio, null or file:PATH"
                )),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_backends_and_explains_mistakes() {
        assert_eq!("stdio".parse(), Ok(ComSpec::Stdio));
        assert_eq!("null".parse(), Ok(ComSpec::Null));
        assert_eq!(
            "file:/tmp/x.log".parse(),
            Ok(ComSpec::File("/tmp/x.log".into()))
        );
        let e = "file:".parse::<ComSpec>().unwrap_err();
        assert!(e.contains("needs a path"), "{e}");
        let e = "tcp".parse::<ComSpec>().unwrap_err();
        assert!(e.contains("not a COM port backend"), "{e}");
    }
}
