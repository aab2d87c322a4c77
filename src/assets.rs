//! The page: public/ embedded at build time, or read from `--public DIR` for development.
//!
//! Paths are checked before any lookup: a request path is percent-decoded once and then must
//! be plain segments of `A-Z a-z 0-9 _ - .`, none starting with a dot. That rules out `..`,
//! `%2e%2e`, double encoding (`%252e` decodes to `%2e`, and `%` is not allowed), backslashes,
//! NUL, absolute URIs and empty segments, whatever the file system below would do with them.
//!
//! From `--public DIR`, only a regular file whose real path is inside DIR's is served: a
//! symlink out of DIR, a FIFO, a device or a directory is a 404. The file type is checked
//! before the open, and the open does not wait, so a FIFO never stalls the loop.

use std::path::{Path, PathBuf};

/// The embedded files; keep in step with public/ (a test checks that every file there is
/// listed). The page's script is ES modules: app.js imports the others by relative path.
static EMBEDDED: &[(&str, &[u8])] = &[
    ("index.html", include_bytes!("../public/index.html")),
    ("style.css", include_bytes!("../public/style.css")),
    ("app.js", include_bytes!("../public/app.js")),
    ("util.js", include_bytes!("../public/util.js")),
    ("state.js", include_bytes!("../public/state.js")),
    ("rooms.js", include_bytes!("../public/rooms.js")),
    ("tabs.js", include_bytes!("../public/tabs.js")),
    ("screens.js", include_bytes!("../public/screens.js")),
    ("people.js", include_bytes!("../public/people.js")),
    ("roomlist.js", include_bytes!("../public/roomlist.js")),
    ("log.js", include_bytes!("../public/log.js")),
    ("token.js", include_bytes!("../public/token.js")),
    ("outbox.js", include_bytes!("../public/outbox.js")),
    ("entry.js", include_bytes!("../public/entry.js")),
    ("errors.js", include_bytes!("../public/errors.js")),
    ("lines.js", include_bytes!("../public/lines.js")),
    ("connection.js", include_bytes!("../public/connection.js")),
];

/// Where the page comes from.
#[derive(Debug, Clone)]
pub enum Assets {
    Embedded,
    Dir(PathBuf),
}

/// A file found for a request.
pub struct File {
    pub body: std::borrow::Cow<'static, [u8]>,
    pub content_type: &'static str,
}

impl Assets {
    /// Looks up a request path (without query). `None` means 404.
    pub fn get(&self, path: &str) -> Option<File> {
        let name = safe_name(path)?;
        let body = match self {
            Assets::Embedded => EMBEDDED.iter().find(|(n, _)| *n == name).map(|(_, b)| (*b).into())?,
            Assets::Dir(dir) => read_inside(dir, &name)?.into(),
        };
        Some(File { body, content_type: content_type(&name) })
    }
}

/// The bytes of `name` under `dir` (canonical, as `--public` keeps it) if its real path is a
/// regular file inside `dir`; `None` otherwise.
fn read_inside(dir: &Path, name: &str) -> Option<Vec<u8>> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let real = dir.join(name).canonicalize().ok()?;
    if !real.starts_with(dir) || !std::fs::metadata(&real).ok()?.is_file() {
        return None;
    }
    // Should the file be swapped for a FIFO or a symlink after the check, the open neither
    // waits for a writer nor follows the link; what it opened is checked again.
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOFOLLOW)
        .open(&real)
        .ok()?;
    let meta = f.metadata().ok()?;
    if !meta.is_file() {
        return None;
    }
    let mut body = Vec::with_capacity(meta.len() as usize);
    f.read_to_end(&mut body).ok()?;
    Some(body)
}

/// Maps a request path to a relative file name inside public/, or `None` if it could leave it.
pub fn safe_name(path: &str) -> Option<String> {
    let decoded = crate::http::percent_decode(path)?;
    let decoded = String::from_utf8(decoded).ok()?;
    let rest = decoded.strip_prefix('/')?;
    if rest.is_empty() {
        return Some("index.html".into());
    }
    if rest.len() > 255 {
        return None;
    }
    let ok_segment = |s: &str| {
        !s.is_empty()
            && !s.starts_with('.')
            && s.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
    };
    rest.split('/').all(ok_segment).then(|| rest.to_string())
}

pub fn content_type(name: &str) -> &'static str {
    match name.rsplit_once('.').map(|(_, ext)| ext) {
        Some("html") => "text/html; charset=utf-8",
        Some("js") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("png") => "image/png",
        Some("svg") => "image/svg+xml",
        Some("ico") => "image/x-icon",
        Some("json") => "application/json",
        Some("txt") => "text/plain; charset=utf-8",
        _ => "application/octet-stream",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traversal_is_refused_in_every_spelling() {
        for p in [
            "/..",
            "/../etc/passwd",
            "/%2e%2e/x",
            "/%2E%2E%2Fx",
            "/%252e%252e/x",
            "/.hidden",
            "/a/../b",
            "/..\\x",
            "/a\\b",
            "/%5c",
            "/a%00.html",
            "/a\0",
            "//etc/passwd",
            "http://x/index.html",
            "index.html",
            "/%",
            "/%zz",
            "/a//b",
            "/a/",
            "/%c0%ae%c0%ae/",
            "/ä",
        ] {
            assert_eq!(safe_name(p), None, "{p:?}");
        }
        assert_eq!(safe_name(&format!("/{}", "a".repeat(300))), None);
    }

    #[test]
    fn ordinary_paths_map_to_files() {
        assert_eq!(safe_name("/").as_deref(), Some("index.html"));
        assert_eq!(safe_name("/app.js").as_deref(), Some("app.js"));
        assert_eq!(safe_name("/img/a-b_c.png").as_deref(), Some("img/a-b_c.png"));
        assert_eq!(safe_name("/%61pp.js").as_deref(), Some("app.js"));
    }

    #[test]
    fn embedded_page_is_served_with_types() {
        let a = Assets::Embedded;
        let f = a.get("/").unwrap();
        assert_eq!(f.content_type, "text/html; charset=utf-8");
        assert!(f.body.starts_with(b"<!doctype html>"));
        assert_eq!(a.get("/app.js").unwrap().content_type, "text/javascript; charset=utf-8");
        assert!(a.get("/nope.js").is_none());
    }

    #[test]
    fn every_file_of_public_is_embedded() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("public");
        let mut on_disk = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let name = entry.unwrap().file_name().into_string().unwrap();
            let f = Assets::Embedded.get(&format!("/{name}"));
            assert!(f.is_some(), "public/{name} is not in EMBEDDED");
            assert_eq!(
                f.unwrap().body.as_ref(),
                std::fs::read(dir.join(&name)).unwrap().as_slice(),
                "{name}"
            );
            on_disk += 1;
        }
        assert_eq!(on_disk, EMBEDDED.len(), "EMBEDDED lists a file public/ does not have");
        // Module scripts are refused by browsers under any type but a JavaScript one.
        for (name, _) in EMBEDDED.iter().filter(|(n, _)| n.ends_with(".js")) {
            assert_eq!(content_type(name), "text/javascript; charset=utf-8", "{name}");
        }
    }
}
