//! Errors of the update-module step (`builder::module`).

use std::path::PathBuf;

/// Why an update module could not be generated, built or checked.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The module name breaks the naming rule (contracts.md C).
    #[error("invalid module name {name:?}: {reason}")]
    InvalidModuleName { name: String, reason: &'static str },

    /// A patched object is neither `vmlinux` nor a valid module name.
    #[error("invalid target object {target:?}: {reason}")]
    InvalidTarget {
        target: String,
        reason: &'static str,
    },

    /// A symbol name cannot be written into the generated C source.
    #[error("invalid symbol name {name:?} in {context}")]
    InvalidSymbolName { name: String, context: String },

    /// The update would replace nothing and run no callback.
    #[error("no patch objects to build an update module from")]
    NoObjects,

    /// The same function of one object is replaced twice.
    #[error("function {name},{sympos} of {target} is replaced by more than one patch object")]
    DuplicateFunction {
        target: String,
        name: String,
        sympos: u32,
    },

    /// The differ's report lacks something a changed function needs.
    #[error("differ report: changed function {function} has no {what}")]
    IncompleteReport {
        function: String,
        what: &'static str,
    },

    /// A replaced function comes without the pre build's code.
    #[error("run-pre data of {function} has no code")]
    EmptyRunPre { function: String },

    /// A skip range lies outside the pre code it applies to.
    #[error(
        "run-pre skip range {offset:#x}+{len} of {function} is outside its {size} bytes of code"
    )]
    SkipOutOfRange {
        function: String,
        offset: u32,
        len: u32,
        size: usize,
    },

    /// A value-checked relocation of the run-pre data cannot be checked as described.
    #[error("run-pre relocation at {function}+{offset:#x}: {reason}")]
    BadRunPreReloc {
        function: String,
        offset: u32,
        reason: &'static str,
    },

    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// An ELF file could not be parsed or written.
    #[error("{path}: malformed ELF: {source}")]
    Elf {
        path: PathBuf,
        #[source]
        source: object::build::Error,
    },

    /// A built module could not be read back.
    #[error("{path}: malformed ELF: {source}")]
    ElfRead {
        path: PathBuf,
        #[source]
        source: object::read::Error,
    },

    /// The replacement function is not a global function of its patch object.
    #[error("{path}: {symbol} is not a defined global function")]
    MissingFunction { path: PathBuf, symbol: String },

    /// A patch-author callback section is not a plain array of pointers to
    /// functions defined in the same patch object.
    #[error("{path}: section {section}: {reason}")]
    BadCallbackSection {
        path: PathBuf,
        section: String,
        reason: String,
    },

    /// kbuild failed; `output` is the tail of what it printed.
    #[error("kbuild failed in {dir} ({status}):\n{output}")]
    Make {
        dir: PathBuf,
        status: std::process::ExitStatus,
        output: String,
    },

    /// `make` could not be started.
    #[error("cannot run make: {source}")]
    Spawn {
        #[source]
        source: std::io::Error,
    },

    /// A `.klp.sym.*` symbol does not follow
    /// `.klp.sym.<object>.<name>,<sympos>` (module-elf-format.rst).
    #[error("{path}: livepatch symbol {symbol:?} is malformed: {reason}")]
    BadKlpSymbol {
        path: PathBuf,
        symbol: String,
        reason: &'static str,
    },

    /// Another module's symbol is used by patch objects of two patched objects
    /// (or of its own module): one livepatch relocation section cannot serve both.
    #[error("livepatch symbol {symbol:?} is used by the patches of {objects}: its relocations cannot be written when either loads; build them as separate updates")]
    AmbiguousKlpSymbol { symbol: String, objects: String },

    /// A section the module loader reads at load time refers to a module's
    /// symbols, which livepatch only relocates when that module loads.
    #[error("{path}: {section} refers to symbols of {object} through livepatch relocations; the loader would read it before they are written")]
    LateSpecialRelocation {
        path: PathBuf,
        section: String,
        object: String,
    },

    /// The kernel tree has no Module.symvers to check references against.
    #[error("{path} is missing: the kernel tree must carry the target's Module.symvers")]
    SymversMissing { path: PathBuf },

    /// The module references symbols the target kernel does not export and
    /// that are not livepatch symbols: the kernel would refuse to load it.
    #[error("{path}: undefined symbols neither exported by the target nor livepatch symbols: {}", symbols.join(", "))]
    Unresolved { path: PathBuf, symbols: Vec<String> },

    /// The built module is not a livepatch for the target kernel.
    #[error("{path}: modinfo {field} is {found:?}, expected {expected:?}")]
    Modinfo {
        path: PathBuf,
        field: &'static str,
        expected: String,
        found: String,
    },
}

/// Result of this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| Error::Io { path, source }
    }

    pub(crate) fn elf(path: impl Into<PathBuf>) -> impl FnOnce(object::build::Error) -> Self {
        let path = path.into();
        move |source| Error::Elf { path, source }
    }
}
