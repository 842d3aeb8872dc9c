//! What every clopa tool shares: logging, progress bars, atomic output files and the exit-code
//! convention (0 ok, 1 failure, 2 usage — clap already exits with 2 on a usage error).
//!
//! Tools stay thin: `main` parses its arguments with clap and hands a closure to [`run_main`],
//! which sets up logging, runs it and turns an error into a message on stderr and exit code 1.
//!
//! ```no_run
//! fn main() -> std::process::ExitCode {
//!     clopa_cli::run_main("clopa-example", 0, false, || Ok(()))
//! }
//! ```

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// The files `clopa-eval` and `clopa-rank` write into their output folders (DESIGN.md), named
/// once for the tools and for `clopa-reproduce`, which plans and checks them.
pub mod outputs {
    /// `clopa-eval -o DIR`'s tables; the last one only with `--split`.
    pub const EVAL: [&str; 4] = [
        "cases.parquet",
        "episodes.parquet",
        "final.parquet",
        TRAJECTORY,
    ];
    /// `clopa-eval`'s trajectory table (`--split`).
    pub const TRAJECTORY: &str = "trajectory.parquet";
    /// Everything `clopa-rank -o DIR` writes.
    pub const RANK: [&str; 6] = [
        "pairs.parquet",
        "ranking.parquet",
        "table2.md",
        "table3.md",
        "fig2.png",
        "fig2.svg",
    ];
}

/// Sets up logging to stderr (`-v` for debug, `-q` for errors only, `RUST_LOG` overrides),
/// runs `f`, and maps the result to an exit code: 0 on success, 1 on error (the error chain
/// is printed as `tool: error: ...` followed by its causes).
pub fn run_main(
    tool: &str,
    verbose: u8,
    quiet: bool,
    f: impl FnOnce() -> anyhow::Result<()>,
) -> ExitCode {
    let malloc = keep_freed_memory();
    init_logging(verbose, quiet);
    tracing::debug!("malloc: {malloc:?}");
    if let Ok(v) = std::env::var("CLOPA_MALLOC")
        && v != "glibc"
    {
        tracing::warn!("CLOPA_MALLOC={v:?} means nothing (only `glibc` does): ignored");
    }
    match f() {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            // A closed stdout (`clopa-x -o - | head`) is not a failure (ripgrep's convention).
            if err.chain().any(|c| {
                c.downcast_ref::<std::io::Error>()
                    .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
            }) {
                return ExitCode::SUCCESS;
            }
            let mut stderr = std::io::stderr().lock();
            let _ = writeln!(stderr, "{tool}: error: {}", error_report(&err));
            ExitCode::from(1)
        }
    }
}

/// What [`keep_freed_memory`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MallocSetting {
    /// glibc now keeps freed memory.
    Kept,
    /// Left to the user, who set this variable (or `CLOPA_MALLOC=glibc`).
    LeftToUser(String),
    /// This glibc refuses so high a threshold (older ones cap it at 32 MiB): left as it was.
    Refused,
    /// Not glibc: nothing to do.
    NotGlibc,
}

/// Makes glibc's malloc keep freed memory for reuse. By default it maps every buffer of 32 MiB
/// and more freshly (mmap) and unmaps it when freed, and returns the heap's free top to the
/// system past 128 KiB: at nnInteractive's sizes (one 32-channel 96³ activation is 108 MiB)
/// every activation of every forward then costs page faults, the kernel's zeroing of the pages
/// and TLB shootdowns when unmapped, ~10 % of a training step on the CPU (BENCHMARKS.md,
/// "allocator"). Kept in the heap instead, a freed activation serves the next one; the
/// process's memory stays at its peak, which it reaches anyway. This holds for buffers the
/// calling thread allocates, as candle and clopa-nn allocate every activation (a worker thread's
/// arena still maps anything over 64 MiB).
///
/// Left alone when the user chose: any of glibc's variables for these settings
/// (`MALLOC_MMAP_THRESHOLD_`, `MALLOC_TRIM_THRESHOLD_`, `MALLOC_TOP_PAD_`, `MALLOC_MMAP_MAX_`, or
/// them in `GLIBC_TUNABLES`), or `CLOPA_MALLOC=glibc` for glibc's own defaults. [`run_main`]
/// calls it first; it must run before the process starts threads (mallopt is not thread-safe).
pub fn keep_freed_memory() -> MallocSetting {
    static ONCE: std::sync::OnceLock<MallocSetting> = std::sync::OnceLock::new();
    ONCE.get_or_init(set_malloc).clone()
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn set_malloc() -> MallocSetting {
    if let Some(var) = users_malloc_choice(|k| std::env::var(k).ok()) {
        return MallocSetting::LeftToUser(var);
    }
    // SAFETY: mallopt sets malloc's parameters; called from run_main before any thread exists.
    // The threshold first: where an older glibc refuses it (at most 32 MiB there) nothing is
    // changed, as the trim threshold alone would pin the mmap threshold at 128 KiB.
    unsafe {
        if libc::mallopt(libc::M_MMAP_THRESHOLD, libc::c_int::MAX) != 1 {
            return MallocSetting::Refused;
        }
        libc::mallopt(libc::M_TRIM_THRESHOLD, libc::c_int::MAX);
    }
    MallocSetting::Kept
}

/// The variable by which the user chose malloc's settings themselves, if any (`var` reads one).
#[cfg_attr(not(all(target_os = "linux", target_env = "gnu")), allow(dead_code))]
fn users_malloc_choice(var: impl Fn(&str) -> Option<String>) -> Option<String> {
    const VARS: [&str; 4] = [
        "MALLOC_MMAP_THRESHOLD_",
        "MALLOC_TRIM_THRESHOLD_",
        "MALLOC_TOP_PAD_",
        "MALLOC_MMAP_MAX_",
    ];
    const TUNABLES: [&str; 4] = [
        "glibc.malloc.mmap_threshold",
        "glibc.malloc.trim_threshold",
        "glibc.malloc.top_pad",
        "glibc.malloc.mmap_max",
    ];
    if var("CLOPA_MALLOC").is_some_and(|v| v == "glibc") {
        return Some("CLOPA_MALLOC".into());
    }
    if let Some(v) = VARS.iter().find(|v| var(v).is_some()) {
        return Some((*v).into());
    }
    var("GLIBC_TUNABLES")
        .is_some_and(|t| TUNABLES.iter().any(|k| t.contains(k)))
        .then(|| "GLIBC_TUNABLES".into())
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn set_malloc() -> MallocSetting {
    MallocSetting::NotGlibc
}

/// The error and its causes, one `caused by:` line each, leaving out a cause that the message
/// before it already ends with (`cannot read x.toml: No such file ...` followed by
/// `caused by: No such file ...` says nothing new).
fn error_report(err: &anyhow::Error) -> String {
    let mut out = err.to_string();
    let mut previous = out.clone();
    for cause in err.chain().skip(1) {
        let text = cause.to_string();
        if previous != text && !previous.ends_with(&format!(": {text}")) {
            out.push_str(&format!("\n  caused by: {text}"));
        }
        previous = text;
    }
    out
}

fn init_logging(verbose: u8, quiet: bool) {
    use tracing_subscriber::EnvFilter;
    let default = if quiet {
        "error"
    } else {
        match verbose {
            0 => "info",
            1 => "debug",
            _ => "trace",
        }
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    // Colour only on a terminal (logs piped to a file or a CI log stay plain) and never with
    // NO_COLOR set (https://no-color.org).
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr())
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr)
        .with_target(false)
        .without_time()
        .try_init();
}

/// A progress bar on stderr; hidden with `quiet`. When stderr is not a terminal (a batch job's
/// log, `2> run.log`) the bar is not redrawn in place but logged as a plain line (`cases: 3/12
/// (25 %), 2m so far, about 6m left`) at most once every [`LOG_PROGRESS_EVERY`], so that a long
/// run's log shows how far it got without a line per step.
pub fn progress_bar(len: u64, message: &str, quiet: bool) -> ProgressBar {
    let target = if quiet {
        Progress::Hidden
    } else if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        Progress::Terminal
    } else {
        Progress::Log(LOG_PROGRESS_EVERY)
    };
    progress_bar_to(len, message, target)
}

/// How often a progress bar on a non-terminal stderr logs a line.
pub const LOG_PROGRESS_EVERY: std::time::Duration = std::time::Duration::from_secs(60);

/// Where a progress bar goes ([`progress_bar`] picks it).
#[derive(Clone, Copy, Debug)]
enum Progress {
    Hidden,
    Terminal,
    /// A log line at most this often.
    Log(std::time::Duration),
}

fn progress_bar_to(len: u64, message: &str, target: Progress) -> ProgressBar {
    let pb = ProgressBar::new(len);
    let template = match target {
        Progress::Hidden => {
            pb.set_draw_target(ProgressDrawTarget::hidden());
            ""
        }
        Progress::Terminal => "{msg} [{elapsed_precise}] {bar:30} {pos}/{len} eta {eta} {prefix}",
        Progress::Log(every) => {
            pb.set_draw_target(ProgressDrawTarget::term_like(Box::new(LogLines::new(
                every,
            ))));
            "{msg}: {pos}/{len} ({percent} %), {so_far} so far, about {mean_eta} left | {prefix}"
        }
    };
    pb.set_style(
        ProgressStyle::with_template(template)
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .with_key(
                "so_far",
                |state: &indicatif::ProgressState, w: &mut dyn std::fmt::Write| {
                    let _ = write!(w, "{}", human(state.elapsed()));
                },
            )
            .with_key("mean_eta", mean_eta),
    );
    pb.set_message(message.to_string());
    pb
}

/// The time left at the mean rate so far. indicatif's `{eta}` follows the last ~15 s, right for a
/// bar redrawn ten times a second but not for a line a minute about steps that take minutes
/// (a step in progress for 15 s reads as "no progress": hours left).
fn mean_eta(state: &indicatif::ProgressState, w: &mut dyn std::fmt::Write) {
    let (pos, len) = (state.pos(), state.len().unwrap_or(0));
    let _ = if pos == 0 || len < pos {
        write!(w, "?")
    } else {
        let left = state.elapsed().mul_f64((len - pos) as f64 / pos as f64);
        write!(w, "{}", human(left))
    };
}

/// A duration in words, to the second: "3 minutes", "45 seconds".
fn human(d: std::time::Duration) -> indicatif::HumanDuration {
    indicatif::HumanDuration(std::time::Duration::from_secs(d.as_secs()))
}

/// indicatif's terminal, as a log: each drawn line becomes an info log line, at most one per
/// `every` (the first once `every` has passed since the bar was made: the tools log their
/// start themselves); cursor movements and clearing mean nothing in a log.
#[derive(Debug)]
struct LogLines {
    every: std::time::Duration,
    last: std::sync::Mutex<std::time::Instant>,
}

impl LogLines {
    fn new(every: std::time::Duration) -> LogLines {
        LogLines {
            every,
            last: std::sync::Mutex::new(std::time::Instant::now()),
        }
    }

    fn log(&self, line: &str) -> std::io::Result<()> {
        // an empty `{prefix}` leaves the template's separator at the end
        let line = line.trim().trim_end_matches('|').trim_end();
        if line.is_empty() {
            return Ok(());
        }
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        let now = std::time::Instant::now();
        if now.duration_since(*last) >= self.every {
            *last = now;
            tracing::info!("{line}");
        }
        Ok(())
    }
}

impl indicatif::TermLike for LogLines {
    fn width(&self) -> u16 {
        // Wide enough for any of the tools' lines (indicatif pads each draw to this width with
        // spaces, which `log` trims).
        1000
    }
    fn move_cursor_up(&self, _: usize) -> std::io::Result<()> {
        Ok(())
    }
    fn move_cursor_down(&self, _: usize) -> std::io::Result<()> {
        Ok(())
    }
    fn move_cursor_right(&self, _: usize) -> std::io::Result<()> {
        Ok(())
    }
    fn move_cursor_left(&self, _: usize) -> std::io::Result<()> {
        Ok(())
    }
    fn write_line(&self, s: &str) -> std::io::Result<()> {
        self.log(s)
    }
    fn write_str(&self, s: &str) -> std::io::Result<()> {
        self.log(s)
    }
    fn clear_line(&self) -> std::io::Result<()> {
        Ok(())
    }
    fn flush(&self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Writes a file atomically: `write` fills a temporary file in the target's folder, which is
/// renamed over `path` only when `write` succeeds. An interrupted or failed run therefore never
/// leaves a half-written output, and a rerun can trust that an existing output is complete.
/// (The mechanics live in `clopa-fs`, shared with the libraries.)
pub fn write_atomic(
    path: &Path,
    write: impl FnOnce(&mut std::fs::File) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    clopa_fs::write_atomic(path, write)
}

/// Like [`write_atomic`] for a writer that wants a path (e.g. a NIfTI or Parquet writer that
/// opens the file itself): `write` receives a temporary path in the target's folder with the same
/// extension(s) as `path`, and the file there is renamed over `path` when `write` succeeds.
pub fn write_atomic_path(
    path: &Path,
    write: impl FnOnce(&Path) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    clopa_fs::write_atomic_path(path, write)
}

/// Parses a patch size given as one number (a cube) or `X,Y,Z` — the `--patch` option of the
/// tools that cut patches (clap `value_parser`).
pub fn parse_patch(s: &str) -> Result<[usize; 3], String> {
    let v: Vec<usize> = s
        .split(',')
        .map(|p| p.trim().parse::<usize>().map_err(|e| format!("{p:?}: {e}")))
        .collect::<Result<_, _>>()?;
    let max = clopa_config::MAX_PATCH;
    let ok = |p: &usize| (1..=max).contains(p);
    match v.as_slice() {
        [p] if ok(p) => Ok([*p; 3]),
        [a, b, c] if ok(a) && ok(b) && ok(c) => Ok([*a, *b, *c]),
        _ => Err(format!("expected P or X,Y,Z (each 1 to {max}), got {s:?}")),
    }
}

/// clap value parser for `--device`: `cpu`, `cuda` or `cuda:N` (whether CUDA is built in is
/// the tool's to say, with a message naming the build feature).
pub fn parse_device(s: &str) -> Result<String, String> {
    clopa_config::cuda_ordinal(s).map(|_| s.to_string())
}

/// clap value parser for a number in [0, 1] (a Dice threshold): out of range is a usage error.
pub fn parse_unit_interval(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(v) if (0.0..=1.0).contains(&v) => Ok(v),
        Ok(v) => Err(format!("must lie in [0, 1], got {v}")),
        Err(_) => Err(format!("{s:?} is not a number")),
    }
}

/// Sets the size of rayon's global thread pool (`--threads`); `None` keeps rayon's default
/// (`RAYON_NUM_THREADS`, else one per core).
pub fn set_threads(threads: Option<usize>) -> anyhow::Result<()> {
    if let Some(n) = threads {
        rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build_global()?;
    }
    Ok(())
}

/// clap value parser for `--set KEY=VALUE` (a profile override): anything else is a usage error
/// (exit 2). Key and value are trimmed; the value is parsed by the profile.
pub fn parse_key_value(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_string(), v.trim().to_string())),
        _ => Err(format!("{s:?} is not KEY=VALUE")),
    }
}

/// `-o -` means standard output.
pub fn is_stdout(path: &Path) -> bool {
    path.as_os_str() == "-"
}

/// clap value parser for outputs that cannot be standard output (a folder, or a file with
/// companion files): `-` is a usage error (exit 2) instead of a file or folder named `-`.
pub fn not_stdout(s: &str) -> Result<std::path::PathBuf, String> {
    if s == "-" {
        Err("this output is a folder or several files, so it cannot be stdout (`-`)".into())
    } else {
        Ok(s.into())
    }
}

/// Checks before the work starts that the output file `path` can be written (see
/// [`clopa_fs::check_writable`]); standard output (`-`) passes.
pub fn check_output(path: &Path) -> anyhow::Result<()> {
    if !is_stdout(path) {
        clopa_fs::check_writable(path)?;
    }
    Ok(())
}

/// Checks before the work starts that the output folder `dir` (which may not exist yet) can be
/// written into, and refuses `-`: a folder cannot be stdout. (Tools refuse `-` already when
/// parsing, with [`not_stdout`]; this is for library callers.)
pub fn check_output_dir(dir: &Path) -> anyhow::Result<()> {
    if is_stdout(dir) {
        anyhow::bail!("`-` (stdout) cannot be an output folder");
    }
    clopa_fs::check_writable_dir(dir)?;
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// What `f` logs through tracing, as text.
    fn logged(f: impl FnOnce()) -> String {
        #[derive(Clone, Default)]
        struct Captured(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);
        impl Write for Captured {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().expect("lock").extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Captured {
            type Writer = Captured;
            fn make_writer(&'a self) -> Captured {
                self.clone()
            }
        }
        let captured = Captured::default();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(captured.clone())
            .with_ansi(false)
            .without_time()
            .finish();
        tracing::subscriber::with_default(subscriber, f);
        let bytes = captured.0.lock().expect("lock").clone();
        String::from_utf8(bytes).expect("utf-8")
    }

    #[test]
    fn progress_on_a_log_is_a_plain_line_at_most_every_interval() {
        let out = logged(|| {
            let pb = progress_bar_to(4, "cases", Progress::Log(Duration::ZERO));
            pb.inc(1);
            pb.set_prefix("case_007");
            pb.inc(1);
            pb.finish_and_clear();
        });
        assert!(out.contains("cases: 1/4 (25 %), "), "{out}");
        assert!(out.contains("cases: 2/4 (50 %), "), "{out}");
        assert!(out.contains(" left | case_007\n"), "{out}");
        assert!(
            out.contains("cases: 0/4 (0 %), 0 seconds so far, about ? left\n"),
            "{out}"
        );
        assert!(!out.contains('\u{1b}') && !out.contains('\r'), "{out:?}");
        // The time left at the mean rate so far: 1 of 4 after two minutes, six minutes left.
        let out = logged(|| {
            let pb = progress_bar_to(4, "cases", Progress::Log(Duration::ZERO))
                .with_elapsed(Duration::from_secs(120));
            pb.inc(1);
        });
        assert!(
            out.contains("cases: 1/4 (25 %), 2 minutes so far, about 6 minutes left\n"),
            "{out}"
        );
        // Within the interval nothing is logged, however much happens.
        let out = logged(|| {
            let pb = progress_bar_to(4, "cases", Progress::Log(Duration::from_secs(3600)));
            pb.inc(1);
            pb.inc(3);
            pb.finish();
        });
        assert_eq!(out, "");
        let out = logged(|| {
            let pb = progress_bar_to(4, "cases", Progress::Hidden);
            pb.inc(1);
        });
        assert_eq!(out, "");
    }

    #[test]
    fn malloc_settings_of_the_user_win() {
        let choice = |vars: &[(&str, &str)]| {
            let vars: Vec<(String, String)> = vars
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            users_malloc_choice(|k| vars.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone()))
        };
        assert_eq!(choice(&[]), None);
        assert_eq!(
            choice(&[("CLOPA_MALLOC", "glibc")]).as_deref(),
            Some("CLOPA_MALLOC")
        );
        assert_eq!(choice(&[("CLOPA_MALLOC", "keep")]), None);
        assert_eq!(
            choice(&[("MALLOC_TOP_PAD_", "131072")]).as_deref(),
            Some("MALLOC_TOP_PAD_")
        );
        // debugging switches and arena counts do not touch these settings
        assert_eq!(
            choice(&[("MALLOC_PERTURB_", "1"), ("MALLOC_ARENA_MAX", "2")]),
            None
        );
        assert_eq!(
            choice(&[("GLIBC_TUNABLES", "glibc.malloc.trim_threshold=0")]).as_deref(),
            Some("GLIBC_TUNABLES")
        );
        assert_eq!(
            choice(&[("GLIBC_TUNABLES", "glibc.malloc.arena_max=2")]),
            None
        );
    }

    #[test]
    fn error_reports_skip_causes_already_quoted() {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "No such file");
        let err = anyhow::Error::new(io).context("cannot read x.toml: No such file");
        assert_eq!(error_report(&err), "cannot read x.toml: No such file");
        let err = anyhow::anyhow!("disk full")
            .context("cannot write out.parquet")
            .context("episode 2");
        assert_eq!(
            error_report(&err),
            "episode 2\n  caused by: cannot write out.parquet\n  caused by: disk full"
        );
        // A short cause that merely occurs inside the message is kept.
        let err = anyhow::anyhow!("0").context("run 0 failed");
        assert_eq!(error_report(&err), "run 0 failed\n  caused by: 0");
    }

    #[test]
    fn patch_sizes_are_a_cube_or_three_axes() {
        assert_eq!(parse_patch("48"), Ok([48; 3]));
        assert_eq!(parse_patch("32, 48,64"), Ok([32, 48, 64]));
        assert_eq!(parse_patch("512"), Ok([512; 3]));
        for bad in [
            "",
            "0",
            "1,2",
            "a",
            "8,8,0",
            "1,2,3,4",
            "513",
            "64,64,1000000",
        ] {
            assert!(parse_patch(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn atomic_write_leaves_nothing_on_failure() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("x.txt");
        let r = write_atomic(&out, |f| {
            f.write_all(b"half")?;
            anyhow::bail!("boom")
        });
        assert!(r.is_err());
        assert!(!out.exists());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn atomic_write_replaces_on_success() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("x.txt");
        std::fs::write(&out, "old").unwrap();
        write_atomic(&out, |f| Ok(f.write_all(b"new")?)).unwrap();
        assert_eq!(std::fs::read_to_string(&out).unwrap(), "new");
        // Regression: outputs used to be left with tempfile's owner-only mode 0600.
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&out).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o644);
        }
    }

    #[test]
    fn atomic_path_keeps_extension_and_cleans_up() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("m.nii.gz");
        write_atomic_path(&out, |tmp| {
            assert!(tmp.to_string_lossy().ends_with(".nii.gz"));
            std::fs::write(tmp, b"abc")?;
            Ok(())
        })
        .unwrap();
        assert_eq!(std::fs::read(&out).unwrap(), b"abc");
        let r = write_atomic_path(&dir.path().join("n.nii"), |tmp| {
            std::fs::write(tmp, b"abc")?;
            anyhow::bail!("fail")
        });
        assert!(r.is_err());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
