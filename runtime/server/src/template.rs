//! `sextant plugin new`: a plugin project in Rust, Python or JavaScript that builds with one
//! command and loads as it is. The sources are `plugins/templates/` and `wit/`, compiled in.

use std::path::{Path, PathBuf};

/// A language a plugin project can be written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Lang {
    /// Rust, built with cargo for `wasm32-wasip2` (wit-bindgen).
    Rust,
    /// Python, built with componentize-py.
    Python,
    /// JavaScript, built with componentize-js.
    Js,
}

/// A plugin kind (the world the project exports).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Kind {
    /// A load balancer.
    Balancer,
    /// A health policy.
    Health,
    /// A traffic scheduler.
    Scheduler,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Self::Balancer => "balancer",
            Self::Health => "health",
            Self::Scheduler => "scheduler",
        }
    }
}

/// Why a project was not written.
#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    /// The name cannot be a plugin, crate and file name at once.
    #[error(
        "{0:?} cannot name a plugin project: use lowercase letters, digits and `-`, starting with a letter, at most 63 characters"
    )]
    Name(String),
    /// The directory exists and is not empty.
    #[error("{0} exists and is not empty; nothing written")]
    NotEmpty(PathBuf),
    /// Writing failed.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// The contract, as every project gets it in `wit/`.
const WIT: [(&str, &str); 7] = [
    ("types.wit", include_str!("../../../wit/types.wit")),
    ("host.wit", include_str!("../../../wit/host.wit")),
    ("load.wit", include_str!("../../../wit/load.wit")),
    ("balancer.wit", include_str!("../../../wit/balancer.wit")),
    ("health.wit", include_str!("../../../wit/health.wit")),
    ("scheduler.wit", include_str!("../../../wit/scheduler.wit")),
    ("worlds.wit", include_str!("../../../wit/worlds.wit")),
];

macro_rules! template {
    ($path:literal) => {
        include_str!(concat!("../../../plugins/templates/", $path))
    };
}

/// The files of a project (path inside it, text with placeholders).
fn files(lang: Lang, kind: Kind) -> Vec<(&'static str, &'static str)> {
    let source = match (lang, kind) {
        (Lang::Rust, Kind::Balancer) => template!("rust/balancer.rs"),
        (Lang::Rust, Kind::Health) => template!("rust/health.rs"),
        (Lang::Rust, Kind::Scheduler) => template!("rust/scheduler.rs"),
        (Lang::Python, Kind::Balancer) => template!("python/balancer_app.py"),
        (Lang::Python, Kind::Health) => template!("python/health_app.py"),
        (Lang::Python, Kind::Scheduler) => template!("python/scheduler_app.py"),
        (Lang::Js, Kind::Balancer) => template!("js/balancer.js"),
        (Lang::Js, Kind::Health) => template!("js/health.js"),
        (Lang::Js, Kind::Scheduler) => template!("js/scheduler.js"),
    };
    match lang {
        Lang::Rust => vec![
            ("Cargo.toml", template!("rust/Cargo.toml")),
            ("src/lib.rs", source),
            ("README.md", template!("rust/README.md")),
        ],
        // componentize-py takes a resource's class from the module named after its interface.
        Lang::Python => vec![
            ("app.py", source),
            match kind {
                Kind::Balancer => ("balancer.py", template!("python/balancer.py")),
                Kind::Health => ("health.py", template!("python/health.py")),
                Kind::Scheduler => ("scheduler.py", template!("python/scheduler.py")),
            },
            ("README.md", template!("python/README.md")),
        ],
        Lang::Js => vec![
            ("plugin.js", source),
            ("package.json", template!("js/package.json")),
            ("README.md", template!("js/README.md")),
        ],
    }
}

/// Whether `name` can be the plugin's record name, the crate's and the component file's.
fn check_name(name: &str) -> Result<(), TemplateError> {
    let ok = name.len() <= 63
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !name.ends_with('-');
    if ok { Ok(()) } else { Err(TemplateError::Name(name.to_owned())) }
}

/// Writes a `lang` project for a `kind` plugin named `name` into `dir` (created; it must
/// not exist or be empty). Returns the files written.
///
/// # Errors
/// A name that cannot name the project, a directory that is not empty, a failed write.
pub fn write(dir: &Path, name: &str, lang: Lang, kind: Kind) -> Result<Vec<PathBuf>, TemplateError> {
    check_name(name)?;
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| TemplateError::Io { path, source }
    };
    if dir.exists() && std::fs::read_dir(dir).map_err(io(dir))?.next().is_some() {
        return Err(TemplateError::NotEmpty(dir.to_owned()));
    }
    let fill = |text: &str| {
        text.replace("{{name}}", name).replace("{{crate}}", &name.replace('-', "_")).replace("{{kind}}", kind.as_str())
    };
    let mut written = Vec::new();
    let wit = WIT.iter().map(|(file, text)| (format!("wit/{file}"), (*text).to_owned()));
    let own = files(lang, kind).into_iter().map(|(file, text)| (file.to_owned(), fill(text)));
    for (file, text) in own.chain(wit) {
        let path = dir.join(&file);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(io(parent))?;
        }
        std::fs::write(&path, text).map_err(io(&path))?;
        written.push(path);
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_project_is_written_filled_in_with_the_contract() {
        for lang in [Lang::Rust, Lang::Python, Lang::Js] {
            for kind in [Kind::Balancer, Kind::Health, Kind::Scheduler] {
                let dir = tempfile::tempdir().unwrap();
                let root = dir.path().join("p");
                let files = write(&root, "my-plugin", lang, kind).unwrap();
                assert!(files.iter().any(|f| f.ends_with("wit/worlds.wit")));
                for f in &files {
                    let text = std::fs::read_to_string(f).unwrap();
                    assert!(!text.contains("{{"), "{} keeps a placeholder", f.display());
                }
                if lang == Lang::Python {
                    // The resource's class, in the module named after its interface.
                    let resource = std::fs::read_to_string(root.join(format!("{}.py", kind.as_str()))).unwrap();
                    assert!(resource.contains("def __init__(self, service: str)"), "{resource}");
                }
                let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
                assert!(readme.contains(&format!("--kind {}", kind.as_str())), "{readme}");
                // Written once: the directory is no longer empty.
                assert!(matches!(write(&root, "my-plugin", lang, kind), Err(TemplateError::NotEmpty(_))));
            }
        }
    }

    #[test]
    fn names_that_cannot_name_a_project_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        for bad in ["", "Caps", "1st", "a_b", "a b", "trailing-", &"x".repeat(64)] {
            let err = write(&dir.path().join("p"), bad, Lang::Rust, Kind::Balancer).unwrap_err();
            assert!(matches!(err, TemplateError::Name(_)), "{bad:?}: {err}");
        }
        assert!(!dir.path().join("p").exists(), "nothing written");
    }
}
