//! Reading a file the user named (config, identity snapshot) within bounds, before any
//! parser sees it: a FIFO or `/dev/zero` would never end, a huge file would exhaust memory,
//! and YAML nested thousands of levels deep costs the parser time quadratic in the depth.

use std::{io::Read, path::Path};

/// Bracket nesting (`[` / `{`) deeper than real Kubernetes objects or configs ever go.
pub const MAX_DEPTH: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum InputError {
    #[error("cannot read it ({0}): check the path")]
    Open(#[source] std::io::Error),
    #[error("permission denied: make it readable by the agent (it runs as root in the chart)")]
    Denied,
    #[error("it is a {0}, not a regular file: give a file (this would never end)")]
    NotFile(&'static str),
    #[error("it is {size} bytes, over the limit of {max}: {hint}")]
    TooBig {
        size: u64,
        max: u64,
        hint: &'static str,
    },
    #[error("it is not UTF-8 text (invalid byte at offset {0}): save it as UTF-8")]
    NotUtf8(usize),
    #[error(transparent)]
    Shape(#[from] crate::yaml_shape::ShapeError),
    #[error("it nests {depth} levels of [ or {{ at line {line}, over the limit of {MAX_DEPTH}: no config or Kubernetes object is that deep")]
    TooDeep { depth: usize, line: usize },
}

/// The file's text if it is a regular, readable, UTF-8 file of at most `max` bytes whose
/// bracket nesting stays within [`MAX_DEPTH`].
pub fn read(path: &Path, max: u64, hint: &'static str) -> Result<String, InputError> {
    let mut bytes = read_bytes(path, max, hint)?;
    // Editors on Windows save UTF-8 with a byte-order mark; it is not content (YAML
    // would read it as the start of a second document).
    if bytes.starts_with(b"\xEF\xBB\xBF") {
        bytes.drain(..3);
    }
    let text =
        String::from_utf8(bytes).map_err(|e| InputError::NotUtf8(e.utf8_error().valid_up_to()))?;
    check_depth(&text)?;
    Ok(text)
}

/// The bytes of a regular file of at most `max` bytes. The file is opened without
/// blocking (a FIFO would wait for a writer) and judged by what was opened, not by its
/// name (a symlink swapped between a check and the open changes nothing); a file that
/// grows while it is read is still cut at the limit.
pub fn read_bytes(path: &Path, max: u64, hint: &'static str) -> Result<Vec<u8>, InputError> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .map_err(open_err)?;
    let meta = file.metadata().map_err(open_err)?;
    let ft = meta.file_type();
    if !ft.is_file() {
        use std::os::unix::fs::FileTypeExt;
        let kind = if ft.is_fifo() {
            "FIFO"
        } else if ft.is_char_device() || ft.is_block_device() {
            "device"
        } else if ft.is_dir() {
            "directory"
        } else if ft.is_socket() {
            "socket"
        } else {
            "special file"
        };
        return Err(InputError::NotFile(kind));
    }
    if meta.len() > max {
        return Err(InputError::TooBig {
            size: meta.len(),
            max,
            hint,
        });
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    file.take(max + 1)
        .read_to_end(&mut bytes)
        .map_err(open_err)?;
    if bytes.len() as u64 > max {
        return Err(InputError::TooBig {
            size: bytes.len() as u64,
            max,
            hint,
        });
    }
    Ok(bytes)
}

/// [`read`], then the YAML shape check (no expanding aliases, no duplicate keys).
pub fn read_yaml(path: &Path, max: u64, hint: &'static str) -> Result<String, InputError> {
    let text = read(path, max, hint)?;
    crate::yaml_shape::check(&text)?;
    Ok(text)
}

fn open_err(e: std::io::Error) -> InputError {
    if e.kind() == std::io::ErrorKind::PermissionDenied {
        InputError::Denied
    } else {
        InputError::Open(e)
    }
}

/// Flow-style nesting depth, outside quoted strings and comments.
fn check_depth(text: &str) -> Result<(), InputError> {
    let mut depth = 0usize;
    for (n, line) in text.lines().enumerate() {
        let mut quote: Option<char> = None;
        for c in line.chars() {
            match (quote, c) {
                (Some(q), c) if c == q => quote = None,
                (Some(_), _) => {}
                (None, '"' | '\'') => quote = Some(c),
                (None, '#') => break,
                (None, '[' | '{') => {
                    depth += 1;
                    if depth > MAX_DEPTH {
                        return Err(InputError::TooDeep { depth, line: n + 1 });
                    }
                }
                (None, ']' | '}') => depth = depth.saturating_sub(1),
                _ => {}
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(tag: &str, bytes: &[u8]) -> std::path::PathBuf {
        let p = std::env::temp_dir().join(format!("tf-input-{tag}-{}", std::process::id()));
        std::fs::write(&p, bytes).unwrap();
        p
    }

    #[test]
    fn a_normal_file_reads_whole() {
        let p = file("ok", b"a: [1, {b: \"[[[\"}]  # [[[\n");
        assert_eq!(read(&p, 1024, "").unwrap(), "a: [1, {b: \"[[[\"}]  # [[[\n");
        let _ = std::fs::remove_file(p);
    }

    #[test]
    fn a_byte_order_mark_is_not_content() {
        let p = file("bom", b"\xEF\xBB\xBFa: 1\n");
        assert_eq!(read_yaml(&p, 1024, "").unwrap(), "a: 1\n");
        let _ = std::fs::remove_file(p);
    }

    #[test]
    fn devices_fifos_and_directories_are_refused_before_reading() {
        assert!(matches!(
            read(Path::new("/dev/zero"), 1 << 20, ""),
            Err(InputError::NotFile("device"))
        ));
        assert!(matches!(
            read(Path::new("/tmp"), 1 << 20, ""),
            Err(InputError::NotFile("directory"))
        ));
        let fifo = std::env::temp_dir().join(format!("tf-input-fifo-{}", std::process::id()));
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        assert!(matches!(
            read(&fifo, 1 << 20, ""),
            Err(InputError::NotFile("FIFO"))
        ));
        let _ = std::fs::remove_file(fifo);
    }

    #[test]
    fn too_big_too_deep_and_not_utf8_say_so() {
        let p = file("big", &[b'a'; 2048]);
        let e = read(&p, 1024, "split it").unwrap_err().to_string();
        assert_eq!(e, "it is 2048 bytes, over the limit of 1024: split it");
        let deep = format!("a: {}{}", "[".repeat(100_000), "]".repeat(100_000));
        let p2 = file("deep", deep.as_bytes());
        let e = read(&p2, 1 << 20, "").unwrap_err().to_string();
        assert!(
            e.starts_with("it nests 65 levels of [ or { at line 1"),
            "{e}"
        );
        let p3 = file("utf8", b"a: b\n\xff\xfe");
        let e = read(&p3, 1024, "").unwrap_err().to_string();
        assert_eq!(
            e,
            "it is not UTF-8 text (invalid byte at offset 5): save it as UTF-8"
        );
        for p in [p, p2, p3] {
            let _ = std::fs::remove_file(p);
        }
    }
}
