//! Finding the parent of a differencing VHDX through its parent locator
//! ([MS-VHDX] section 2.6.2.6.3) on a Linux host, and writing the locator
//! of a new child.

use std::path::{Component, Path, PathBuf};

use super::spec::ParentLocator;

/// One place to look for the parent, in the order the spec gives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Candidate {
    /// The locator key (or "file name in the child's directory").
    pub source: String,
    /// The locator value as stored.
    pub value: String,
    /// The host path to try, or why the value cannot name one here.
    pub path: Result<PathBuf, String>,
}

/// Splits a Windows-style path into its parts, accepting both separators.
fn parts(p: &str) -> Vec<&str> {
    p.split(['\\', '/']).filter(|s| !s.is_empty()).collect()
}

/// `C:` / `c:`: a drive letter.
fn has_drive_letter(p: &str) -> bool {
    let b = p.as_bytes();
    b.len() >= 2 && b[0].is_ascii_alphabetic() && b[1] == b':'
}

/// Converts a path relative to the child's directory.
fn relative(child_dir: &Path, value: &str) -> Result<PathBuf, String> {
    if has_drive_letter(value) || value.starts_with("\\\\") {
        return Err("is not a relative path".into());
    }
    let mut out = child_dir.to_path_buf();
    for part in parts(value) {
        match part {
            "." => {}
            ".." => out.push(".."),
            p => out.push(p),
        }
    }
    Ok(out)
}

/// Converts an absolute Win32 path: `\\?\` prefixes are removed; a path with
/// a drive letter or a UNC share cannot be named on Linux, a rooted path
/// without one (as rehost writes for Linux parents) is taken as a Linux
/// absolute path.
fn absolute(value: &str) -> Result<PathBuf, String> {
    let v = value
        .strip_prefix("\\\\?\\")
        .or_else(|| value.strip_prefix("//?/"))
        .unwrap_or(value);
    if has_drive_letter(v) {
        return Err(format!(
            "names drive {} which does not exist on this host",
            &v[..2]
        ));
    }
    if v.starts_with("UNC\\") || v.starts_with("\\\\") {
        return Err("names a network share, which cannot be opened here".into());
    }
    if !(v.starts_with('\\') || v.starts_with('/')) {
        return Err("is not an absolute path".into());
    }
    let mut out = PathBuf::from("/");
    for part in parts(v) {
        out.push(part);
    }
    Ok(out)
}

/// Every place to look for the parent, in order: relative_path (against the
/// child's directory), volume_path (never resolvable on Linux),
/// absolute_win32_path, then as a last resort the file name of each stored
/// path in the child's directory.
pub(crate) fn candidates(child: &Path, locator: &ParentLocator) -> Vec<Candidate> {
    let child_dir = match child.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let mut out: Vec<Candidate> = Vec::new();
    let mut names: Vec<String> = Vec::new();
    for key in ["relative_path", "volume_path", "absolute_win32_path"] {
        let Some(value) = locator.get(key) else {
            continue;
        };
        let path = match key {
            "relative_path" => relative(&child_dir, value),
            "volume_path" => Err("volume GUID paths cannot be resolved on Linux".into()),
            _ => absolute(value),
        };
        if let Some(name) = parts(value).last() {
            if *name != ".." && *name != "." && !names.iter().any(|n| n == name) {
                names.push((*name).to_string());
            }
        }
        out.push(Candidate {
            source: key.into(),
            value: value.into(),
            path,
        });
    }
    for name in names {
        let p = child_dir.join(&name);
        if out.iter().any(|c| c.path.as_ref() == Ok(&p)) {
            continue;
        }
        out.push(Candidate {
            source: "file name in the child's directory".into(),
            value: name,
            path: Ok(p),
        });
    }
    out
}

/// `relative_path` for a child in `child_dir` whose parent is `parent`
/// (both absolute and canonical), with `\` separators.
pub(crate) fn relative_path_value(child_dir: &Path, parent: &Path) -> String {
    let from: Vec<Component> = child_dir.components().collect();
    let to: Vec<Component> = parent.components().collect();
    let common = from
        .iter()
        .zip(to.iter())
        .take_while(|(a, b)| a == b)
        .count();
    let mut parts: Vec<String> = Vec::new();
    for _ in common..from.len() {
        parts.push("..".into());
    }
    for c in &to[common..] {
        parts.push(c.as_os_str().to_string_lossy().into_owned());
    }
    if common == from.len() {
        parts.insert(0, ".".into());
    }
    parts.join("\\")
}

/// `absolute_win32_path` for a Linux parent: the extended-length prefix and
/// the absolute path with `\` separators (there is no drive letter).
pub(crate) fn absolute_path_value(parent: &Path) -> String {
    let mut s = String::from("\\\\?\\");
    for c in parent.components() {
        if let Component::Normal(p) = c {
            s.push('\\');
            s.push_str(&p.to_string_lossy());
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::super::spec::VHDX_PARENT_LOCATOR_TYPE;
    use super::*;

    fn locator(entries: &[(&str, &str)]) -> ParentLocator {
        ParentLocator {
            locator_type: VHDX_PARENT_LOCATOR_TYPE,
            entries: entries
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    #[test]
    fn windows_locators_become_host_paths_in_spec_order() {
        let l = locator(&[
            ("parent_linkage", "{83ed0ec3-24c8-49a6-a959-5e4bf1288bfb}"),
            ("absolute_win32_path", "\\\\?\\C:\\vms\\base.vhdx"),
            (
                "volume_path",
                "\\\\?\\Volume{26A21BDA-A627-11D7-9931-806E6F6E6963}\\vms\\base.vhdx",
            ),
            ("relative_path", "..\\..\\images\\base.vhdx"),
        ]);
        let c = candidates(Path::new("/srv/a/b/child.vhdx"), &l);
        let got: Vec<(&str, Result<PathBuf, String>)> = c
            .iter()
            .map(|c| (c.source.as_str(), c.path.clone()))
            .collect();
        assert_eq!(got[0].0, "relative_path");
        assert_eq!(
            got[0].1,
            Ok(PathBuf::from("/srv/a/b/../../images/base.vhdx"))
        );
        assert_eq!(got[1].0, "volume_path");
        assert!(got[1].1.as_ref().unwrap_err().contains("volume GUID"));
        assert_eq!(got[2].0, "absolute_win32_path");
        assert!(got[2].1.as_ref().unwrap_err().contains("drive C:"));
        assert_eq!(got[3].0, "file name in the child's directory");
        assert_eq!(got[3].1, Ok(PathBuf::from("/srv/a/b/base.vhdx")));
        assert_eq!(got.len(), 4);
    }

    #[test]
    fn rooted_and_relative_forms() {
        let l = locator(&[
            ("relative_path", ".\\base.vhdx"),
            ("absolute_win32_path", "\\\\?\\\\data\\img\\base.vhdx"),
        ]);
        let c = candidates(Path::new("child.vhdx"), &l);
        assert_eq!(c[0].path, Ok(PathBuf::from("./base.vhdx")));
        assert_eq!(c[1].path, Ok(PathBuf::from("/data/img/base.vhdx")));
        // "./base.vhdx" already covers the last-resort file name.
        assert_eq!(c.len(), 2);
        assert!(absolute("\\\\?\\UNC\\server\\share\\x.vhdx").is_err());
        assert!(absolute("\\\\server\\share\\x.vhdx").is_err());
        assert!(absolute("base.vhdx").is_err());
        assert!(relative(Path::new("/x"), "D:\\a.vhdx").is_err());
    }

    #[test]
    fn values_written_for_new_children() {
        assert_eq!(
            relative_path_value(Path::new("/a/b"), Path::new("/a/b/base.vhdx")),
            ".\\base.vhdx"
        );
        assert_eq!(
            relative_path_value(Path::new("/a/b/c"), Path::new("/a/x/base.vhdx")),
            "..\\..\\x\\base.vhdx"
        );
        assert_eq!(
            absolute_path_value(Path::new("/a/x/base.vhdx")),
            "\\\\?\\\\a\\x\\base.vhdx"
        );
        // Round trip through the resolver.
        let l = locator(&[
            (
                "relative_path",
                &relative_path_value(Path::new("/a/b/c"), Path::new("/a/x/base.vhdx")),
            ),
            (
                "absolute_win32_path",
                &absolute_path_value(Path::new("/a/x/base.vhdx")),
            ),
        ]);
        let c = candidates(Path::new("/a/b/c/child.vhdx"), &l);
        assert_eq!(c[0].path, Ok(PathBuf::from("/a/b/c/../../x/base.vhdx")));
        assert_eq!(c[1].path, Ok(PathBuf::from("/a/x/base.vhdx")));
    }
}
