//! The work behind `clopa-reproduce`: the whole CLoPA protocol for a pipeline profile, as a chain
//! of the sibling tools run as subprocesses, with every finished step skipped on a rerun.
//!
//! [`reproduce`] resolves the profile ([`Options`]), writes it to `OUT/profile.toml`, then runs
//! `clopa-synth` (the profile's `[synth]` datasets), `clopa-split`, the base `clopa-simulate`, and
//! for each training run, scheduled episode and method `clopa-train-episode` (warm-started from the
//! previous episode) followed by `clopa-simulate` with the checkpoint chain; then `clopa-eval` per
//! task, [`merge_tables`] into one `cases.parquet` / `episodes.parquet` / `trajectory.parquet`, and
//! `clopa-rank`. Each step is a [`Step`]: a command and the files it writes. The tools write
//! atomically, so a step whose outputs all exist, look whole and are newer than its inputs is
//! complete and is skipped, if [`Commands`] (`OUT/commands.json`) records that its command made
//! them.
//!
//! Layout of `OUT` (see [`layout`]): `<task>/split.parquet`, `<task>/base/steps.parquet`,
//! `<task>/<method>/run<r>/ep<e>.safetensors` (+ `.log.parquet`, `.steps.parquet`),
//! `<task>/eval/*.parquet`, and at the top `profile.toml`, the merged tables and the rank outputs.
//!
//! ```no_run
//! use clopa_reproduce::{Options, reproduce};
//! let opts = Options {
//!     profile: Some("pipelines/tiny.toml".into()),
//!     sets: vec![],
//!     seed: None,
//!     out: "runs/tiny".into(),
//!     data_root: "data".into(),
//!     model: None,
//!     bin_dir: "target/release".into(),
//!     child_verbosity: None,
//! };
//! let summary = reproduce(&opts, &mut |_step, _done, _total| {})?;
//! println!("{} steps ran, {} skipped", summary.ran, summary.skipped);
//! # Ok::<(), anyhow::Error>(())
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, bail};
use arrow::array::RecordBatch;
use arrow::datatypes::{DataType, Schema};
use clopa_config::{Manifest, Profile};
use clopa_table::{Provenance, SplitRow};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

/// Everything `reproduce` needs.
#[derive(Clone, Debug)]
pub struct Options {
    /// Pipeline profile; `None` = the embedded quick profile.
    pub profile: Option<PathBuf>,
    /// Overrides of single profile keys (`Profile::set`), applied in order.
    pub sets: Vec<(String, String)>,
    /// Overrides the profile's `seed`.
    pub seed: Option<u64>,
    /// Output folder (`runs/NAME`).
    pub out: PathBuf,
    /// Folder that manifests' relative `dataset` paths (and `[synth]` datasets) start from.
    pub data_root: PathBuf,
    /// Base model folder; `None` = the profile's `model`.
    pub model: Option<PathBuf>,
    /// Folder holding the sibling binaries (`clopa-split`, ...).
    pub bin_dir: PathBuf,
    /// Flag passed to every child: `None` = `-q`, `Some(n)` = `-v` n times (0 = neither).
    pub child_verbosity: Option<u8>,
}

/// One command of the chain and the files it leaves when complete.
#[derive(Clone, Debug)]
pub struct Step {
    /// Short description, e.g. `train synth-vessels in run0 ep1`.
    pub label: String,
    /// Binary name (found in `Options::bin_dir`).
    pub program: String,
    /// Arguments.
    pub args: Vec<OsString>,
    /// Files the step writes (see [`Step::is_done`]). Empty = always run (the tool skips itself).
    pub outputs: Vec<PathBuf>,
    /// Dataset folders the step reads through `--manifest` and `--data-root`, which its
    /// arguments do not name file by file: their files count as inputs too ([`Step::is_done`]).
    pub data_dirs: Vec<PathBuf>,
    /// `-q` or `-v`: passed to the tool after `args` but not part of the step's recorded command
    /// ([`Commands::recipe`]), so that a rerun with other logging is not a change of the step.
    pub log_flag: Option<String>,
}

impl Step {
    fn new(label: String, program: &str, outputs: Vec<PathBuf>) -> Step {
        Step {
            label,
            program: program.to_string(),
            args: Vec::new(),
            outputs,
            data_dirs: Vec::new(),
            log_flag: None,
        }
    }

    /// Sets the logging flag passed to the tool: `None` = `-q`, `Some(0)` = none, `Some(n)` =
    /// `-v` (repeated `n` times where `many_v`, else once).
    fn logging(mut self, verbosity: Option<u8>, many_v: bool) -> Step {
        self.log_flag = match verbosity {
            None => Some("-q".into()),
            Some(0) => None,
            Some(n) => Some(format!(
                "-{}",
                "v".repeat(if many_v { n.into() } else { 1 })
            )),
        };
        self
    }

    fn arg(mut self, a: impl Into<OsString>) -> Step {
        self.args.push(a.into());
        self
    }

    fn args<I: IntoIterator<Item = A>, A: Into<OsString>>(mut self, it: I) -> Step {
        self.args.extend(it.into_iter().map(Into::into));
        self
    }

    /// Whether the step can be skipped, by make's rule and a look at each output: every output
    /// exists and looks whole ([`looks_whole`]: the tools write atomically, but a file can still
    /// be truncated or emptied afterwards), and none is older than an input file named in the
    /// arguments. So a checkpoint retrained or a model re-baked by hand makes the steps that read
    /// it run again, and their new outputs then do the same for the steps after them.
    pub fn is_done(&self) -> bool {
        self.pending().is_none()
    }

    /// Why the step is not done by make's rule ([`Step::is_done`]), in words; `None` when it is.
    pub fn pending(&self) -> Option<String> {
        if self.outputs.is_empty() {
            return Some("the tool checks what is done".into());
        }
        let mut oldest_output: Option<(std::time::SystemTime, &PathBuf)> = None;
        for p in &self.outputs {
            let Ok(meta) = std::fs::metadata(p) else {
                return Some(format!("{} does not exist", p.display()));
            };
            let Ok(t) = meta.modified() else {
                return Some(format!("{} has no modification time", p.display()));
            };
            if !meta.is_file() || !looks_whole(p, meta.len()) {
                return Some(format!("{} is not a whole file", p.display()));
            }
            if oldest_output.is_none_or(|(o, _)| t < o) {
                oldest_output = Some((t, p));
            }
        }
        match (self.newest_input_file(), oldest_output) {
            (Some((i, input)), Some((o, output))) if i > o => Some(format!(
                "{} is newer than {}",
                input.display(),
                output.display()
            )),
            _ => None,
        }
    }

    /// After the step ran: gives each output at least the time of the newest input. The tool may
    /// have found its output current and left it as it was (clopa-simulate and
    /// clopa-train-episode check the inputs' sha256), and an input may carry a time in the future:
    /// an output older than an input would make every later run redo the step. The mark is the
    /// newest input's own time, not the clock's: file times are taken from the kernel's coarser
    /// clock, so "now" can lie after the time of a file the next step writes.
    fn mark_current(&self) -> anyhow::Result<()> {
        let Some(newest) = self.newest_input() else {
            return Ok(());
        };
        for p in &self.outputs {
            let f = File::options()
                .write(true)
                .open(p)
                .with_context(|| format!("{} did not write {}", self.program, p.display()))?;
            if f.metadata()?.modified()? < newest {
                f.set_modified(newest)
                    .with_context(|| format!("cannot set the time of {}", p.display()))?;
            }
        }
        Ok(())
    }

    /// The modification time of the newest input file named in the arguments. A model folder
    /// (`--model DIR`) counts by its `model.json` and `model.safetensors`, so a model imported or
    /// re-baked in place reruns what it feeds; a dataset folder ([`Step::data_dirs`]) by its
    /// files and those one folder down (`dataset.json`, `imagesTr/*`, `labelsTr/*`), so a case
    /// replaced or added reruns the task; other folders (outputs) do not count.
    fn newest_input(&self) -> Option<std::time::SystemTime> {
        self.newest_input_file().map(|(t, _)| t)
    }

    /// [`Step::newest_input`] and the file it is.
    fn newest_input_file(&self) -> Option<(std::time::SystemTime, PathBuf)> {
        let named = self
            .args
            .iter()
            .map(Path::new)
            .filter(|p| !self.outputs.iter().any(|o| o == p))
            .flat_map(|p| {
                if p.join("model.safetensors").is_file() {
                    vec![p.join("model.json"), p.join("model.safetensors")]
                } else {
                    vec![p.to_path_buf()]
                }
            });
        fn entries(dir: &Path) -> Vec<PathBuf> {
            std::fs::read_dir(dir)
                .map(|it| it.filter_map(|e| e.ok().map(|e| e.path())).collect())
                .unwrap_or_default()
        }
        let data = self.data_dirs.iter().flat_map(|d| {
            entries(d)
                .into_iter()
                .flat_map(|p| if p.is_dir() { entries(&p) } else { vec![p] })
        });
        named
            .chain(data)
            .filter_map(|p| {
                let m = std::fs::metadata(&p)
                    .ok()
                    .filter(std::fs::Metadata::is_file)?;
                Some((m.modified().ok()?, p))
            })
            .max_by_key(|(t, _)| *t)
    }

    /// The command line, shell-quoted, for logs and error messages.
    pub fn command_line(&self, bin_dir: &Path) -> String {
        let mut s = quote(&bin_dir.join(&self.program).to_string_lossy());
        s.push_str(&self.quoted_args());
        if let Some(flag) = &self.log_flag {
            s.push(' ');
            s.push_str(flag);
        }
        s
    }

    /// ` arg1 arg2 ...`, each shell-quoted.
    fn quoted_args(&self) -> String {
        self.args
            .iter()
            .map(|a| format!(" {}", quote(&a.to_string_lossy())))
            .collect()
    }
}

/// A cheap completeness check of an output by its kind: Parquet has its magic at both ends and
/// a footer that fits; safetensors' header parses and its tensors end exactly at the end of the
/// file; anything else is not empty. It catches the truncated or emptied file that existence
/// alone would take for done.
fn looks_whole(path: &Path, len: u64) -> bool {
    use std::io::{Read, Seek, SeekFrom};
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
    let read = || -> std::io::Result<bool> {
        let mut f = File::open(path)?;
        match ext {
            "parquet" => {
                if len < 12 {
                    return Ok(false);
                }
                let mut head = [0u8; 4];
                f.read_exact(&mut head)?;
                let mut tail = [0u8; 8];
                f.seek(SeekFrom::End(-8))?;
                f.read_exact(&mut tail)?;
                let footer = u64::from(u32::from_le_bytes([tail[0], tail[1], tail[2], tail[3]]));
                Ok(&head == b"PAR1" && &tail[4..] == b"PAR1" && footer + 12 <= len)
            }
            "safetensors" => {
                let mut n = [0u8; 8];
                if len < 8 {
                    return Ok(false);
                }
                f.read_exact(&mut n)?;
                let n = u64::from_le_bytes(n);
                if n > len - 8 || n > 100_000_000 {
                    return Ok(false);
                }
                let mut header = vec![0u8; n as usize];
                f.read_exact(&mut header)?;
                let Ok(serde_json::Value::Object(h)) = serde_json::from_slice(&header) else {
                    return Ok(false);
                };
                let end = h
                    .iter()
                    .filter(|(k, _)| k.as_str() != "__metadata__")
                    .filter_map(|(_, v)| v["data_offsets"][1].as_u64())
                    .max()
                    .unwrap_or(0);
                Ok(8 + n + end == len)
            }
            _ => Ok(len > 0),
        }
    };
    read().unwrap_or(false)
}

/// What made each output of a run folder, kept in `OUT/commands.json` (as ninja keeps its log):
/// make's rule alone ([`Step::is_done`]) takes an output for done whatever made it, so a steps
/// table written by hand with other settings, or a run with another `--data-root`, would be
/// skipped. Each output is recorded with the step's command ([`Commands::recipe`], which does not
/// depend on how the run folder and the data root were spelled) and the file's size and
/// modification time once the step has run; a step whose outputs are not all recorded so (made
/// by another command, replaced since, or from a folder older than this record) runs again, and
/// its tool then decides what is current: clopa-simulate and clopa-train-episode keep an output
/// whose recorded settings and inputs match, the others rewrite theirs.
#[derive(Debug)]
pub struct Commands {
    path: PathBuf,
    out: PathBuf,
    made_by: BTreeMap<String, Made>,
    /// Whether the folder had a record (a folder from before it has none).
    pub found: bool,
    /// Whether a failed write was reported already.
    warned: bool,
}

/// How one output was made, and the file it then was.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct Made {
    command: String,
    bytes: u64,
    modified_ns: u64,
}

impl Made {
    /// `command` and the file at `path` as it is now; `None` if it does not exist or its time is
    /// not one after 1970 in nanoseconds (the record would not recognise it).
    fn now(command: &str, path: &Path) -> Option<Made> {
        let meta = std::fs::metadata(path).ok()?;
        let since_1970 = meta
            .modified()
            .ok()?
            .duration_since(std::time::UNIX_EPOCH)
            .ok()?;
        let modified_ns = u64::try_from(since_1970.as_nanos()).ok()?;
        Some(Made {
            command: command.to_string(),
            bytes: meta.len(),
            modified_ns,
        })
    }
}

impl Commands {
    /// The record's file name in the run folder.
    pub const FILE: &str = "commands.json";

    /// The record of run folder `out`; empty when there is none. One that cannot be read is
    /// taken as empty (with a warning): that only makes every step's tool check its outputs.
    pub fn load(out: &Path) -> Commands {
        let path = out.join(Self::FILE);
        let mut found = true;
        let made_by = match std::fs::read(&path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                found = false;
                BTreeMap::new()
            }
            Err(e) => {
                tracing::warn!(
                    "cannot read {}: {e}; every step checks its outputs",
                    path.display()
                );
                BTreeMap::new()
            }
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                tracing::warn!(
                    "{} is not clopa-reproduce's record of outputs ({e}); every step checks \
                     its outputs",
                    path.display()
                );
                BTreeMap::new()
            }),
        };
        Commands {
            path,
            out: out.to_path_buf(),
            made_by,
            found,
            warned: false,
        }
    }

    /// The step's command as recorded: the program's name and its arguments, shell-quoted,
    /// without the binaries' folder (another build of the same tools does not redo a run) and
    /// without the logging flag; a path inside the run folder is written `$OUT/...` and any other
    /// path (an argument with a `/`, or the data root) as the file system resolves it, so a
    /// rerun with the run folder or the data root spelled otherwise (`runs/q`, `./runs/q`,
    /// `/home/me/runs/q`, `data/`, `../x/data`) is the same command. A bare word stays a word
    /// (`in`, `0`) even where a file of that name exists.
    pub fn recipe(&self, step: &Step) -> String {
        let mut s = quote(&step.program);
        let mut previous: Option<&OsString> = None;
        for a in &step.args {
            let p = Path::new(a);
            let is_path = a.to_string_lossy().contains(std::path::MAIN_SEPARATOR)
                || previous.is_some_and(|f| f == "--data-root");
            // (built from the run folder as given: `OUT/x`, never `OUT/../x`)
            let inside = p.strip_prefix(&self.out).ok().filter(|rest| {
                rest.components()
                    .all(|c| matches!(c, std::path::Component::Normal(_)))
            });
            let text = if let Some(inside) = inside {
                let inside = inside.to_string_lossy();
                if inside.is_empty() {
                    "$OUT".to_string()
                } else {
                    format!("$OUT/{inside}")
                }
            } else if is_path {
                std::fs::canonicalize(p)
                    .or_else(|_| std::path::absolute(p))
                    .unwrap_or_else(|_| p.to_path_buf())
                    .to_string_lossy()
                    .into_owned()
            } else {
                a.to_string_lossy().into_owned()
            };
            previous = Some(a);
            s.push(' ');
            s.push_str(&quote(&text));
        }
        s
    }

    /// An output's key: its path inside the run folder.
    fn key(&self, output: &Path) -> String {
        output
            .strip_prefix(&self.out)
            .unwrap_or(output)
            .to_string_lossy()
            .into_owned()
    }

    /// Whether every output of `step` is recorded as made by the step's command
    /// ([`Commands::recipe`]) and is still the file it was then (size and modification time).
    pub fn made(&self, step: &Step) -> bool {
        self.not_made(step).is_none()
    }

    /// Why [`Commands::made`] does not hold, in words; `None` when it does.
    pub fn not_made(&self, step: &Step) -> Option<String> {
        let recipe = self.recipe(step);
        if step.outputs.is_empty() {
            return Some("no outputs to record".into());
        }
        for o in &step.outputs {
            let key = self.key(o);
            let why = match self.made_by.get(&key) {
                None => format!("{} has no record of {key}", Self::FILE),
                Some(m) if m.command != recipe => {
                    format!("{key} was made by another command ({})", m.command)
                }
                Some(m) if Made::now(&recipe, o).as_ref() != Some(m) => {
                    format!("{key} changed since {} recorded it", Self::FILE)
                }
                Some(_) => continue,
            };
            return Some(why);
        }
        None
    }

    /// [`Commands::record`], warning (once a run) where it cannot: the step is done either way,
    /// and a missing record only costs the next run a check by the tool.
    pub fn record_or_warn(&mut self, step: &Step) {
        if let Err(e) = self.record(step)
            && !self.warned
        {
            self.warned = true;
            tracing::warn!(
                "{e} ({}); the next run will check these steps again",
                e.root_cause()
            );
        }
    }

    /// Records that `step`'s command made its outputs as they are now, and rewrites the file
    /// (atomically).
    pub fn record(&mut self, step: &Step) -> anyhow::Result<()> {
        let recipe = self.recipe(step);
        for o in &step.outputs {
            let made = Made::now(&recipe, o).with_context(|| {
                format!(
                    "{} is missing or its modification time is not one after 1970",
                    o.display()
                )
            })?;
            self.made_by.insert(self.key(o), made);
        }
        let text = serde_json::to_string_pretty(&self.made_by)?;
        clopa_cli::write_atomic(&self.path, |f| {
            use std::io::Write;
            Ok(f.write_all(text.as_bytes())?)
        })
        .with_context(|| {
            format!(
                "cannot record the step's command in {}",
                self.path.display()
            )
        })
    }
}

fn quote(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=,:+".contains(c))
    {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

/// What a run did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    /// Steps whose command ran.
    pub ran: usize,
    /// Steps skipped because their outputs were done and made by the step's command.
    pub skipped: usize,
    /// Steps that always run because the tool checks and skips by itself (clopa-synth).
    pub checked: usize,
}

/// Paths of a run folder.
pub mod layout {
    use std::path::{Path, PathBuf};

    /// The resolved profile.
    pub fn profile(out: &Path) -> PathBuf {
        out.join("profile.toml")
    }
    /// A task's split.
    pub fn split(out: &Path, task: &str) -> PathBuf {
        out.join(task).join("split.parquet")
    }
    /// The base model's steps table.
    pub fn base_steps(out: &Path, task: &str) -> PathBuf {
        out.join(task).join("base").join("steps.parquet")
    }
    /// Folder of one method and training run.
    pub fn run_dir(out: &Path, task: &str, method: &str, run: u32) -> PathBuf {
        out.join(task).join(method).join(format!("run{run}"))
    }
    /// An episode checkpoint.
    pub fn checkpoint(out: &Path, task: &str, method: &str, run: u32, ep: u32) -> PathBuf {
        run_dir(out, task, method, run).join(format!("ep{ep}.safetensors"))
    }
    /// The training log clopa-train-episode writes beside a checkpoint (`<stem>.log.parquet`).
    pub fn train_log(out: &Path, task: &str, method: &str, run: u32, ep: u32) -> PathBuf {
        run_dir(out, task, method, run).join(format!("ep{ep}.log.parquet"))
    }
    /// The steps table of an episode checkpoint.
    pub fn episode_steps(out: &Path, task: &str, method: &str, run: u32, ep: u32) -> PathBuf {
        run_dir(out, task, method, run).join(format!("ep{ep}.steps.parquet"))
    }
    /// A task's clopa-eval folder.
    pub fn eval_dir(out: &Path, task: &str) -> PathBuf {
        out.join(task).join("eval")
    }
}

/// The profile after `--profile`, `--set` and `--seed`.
pub fn resolve_profile(opts: &Options) -> anyhow::Result<Profile> {
    let mut p = match &opts.profile {
        Some(path) => Profile::load(path)
            .with_context(|| format!("cannot load the profile {}", path.display()))?,
        None => Profile::quick()?,
    };
    p.set_all(&opts.sets)?;
    if let Some(s) = opts.seed {
        p.set("seed", &s.to_string())?;
    }
    if let Some(m) = &opts.model {
        p.set("model", &toml_string(&m.to_string_lossy()))?;
    }
    Ok(p)
}

fn toml_string(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

/// Settings a tool would refuse only at its own step — after the earlier steps ran and
/// `profile.toml` was written, which then refuses the corrected profile for that folder —
/// checked before anything is written: the `[synth]` kinds and size (clopa-synth's rules) and a
/// patch the model's total stride divides (clopa-simulate's and clopa-train-episode's).
fn preflight(profile: &Profile, model: &Path) -> anyhow::Result<()> {
    if let Some(synth) = &profile.synth {
        for (folder, kind) in &synth.datasets {
            let kind: clopa_phantom::TaskKind = kind
                .parse()
                .with_context(|| format!("profile [synth] datasets, {folder:?}"))?;
            clopa_phantom::SynthConfig {
                kind,
                size: Some(synth.size),
                spacing: None,
            }
            .validate()
            .context("profile [synth] size")?;
        }
    }
    let json = model.join("model.json");
    let text = std::fs::read_to_string(&json)
        .with_context(|| format!("cannot read {}", json.display()))?;
    let meta: serde_json::Value = serde_json::from_str(&text)
        .with_context(|| format!("{} is not valid JSON", json.display()))?;
    // Strides per stage, each a number or one per axis (nnU-Net writes both); anything else is
    // left to the tools' own model loading, which names the problem.
    let Some(strides) = meta
        .pointer("/architecture/arch_kwargs/strides")
        .and_then(|s| s.as_array())
    else {
        return Ok(());
    };
    let mut total = [1u64; 3];
    for stage in strides {
        let per_axis: Option<Vec<u64>> = match stage {
            serde_json::Value::Array(a) => a.iter().map(|v| v.as_u64()).collect(),
            v => v.as_u64().map(|n| vec![n; 3]),
        };
        match per_axis {
            Some(s) if s.len() == 3 => (0..3).for_each(|d| total[d] *= s[d]),
            _ => return Ok(()),
        }
    }
    if (0..3).any(|d| total[d] == 0 || !(profile.patch[d] as u64).is_multiple_of(total[d])) {
        bail!(
            "the profile's patch {:?} is not a multiple of the total stride {total:?} of the model \
             {} (per axis)",
            profile.patch,
            model.display()
        );
    }
    Ok(())
}

/// Scheduled episodes of each training run in a split table: run -> sorted episode numbers.
pub fn episodes_per_run(rows: &[SplitRow]) -> BTreeMap<u32, Vec<u32>> {
    let mut out: BTreeMap<u32, BTreeSet<u32>> = BTreeMap::new();
    for r in rows {
        if let Some(run) = r.run {
            let set = out.entry(run).or_default();
            if let Some(e) = r.episode {
                set.insert(e);
            }
        }
    }
    out.into_iter()
        .map(|(r, s)| (r, s.into_iter().collect()))
        .collect()
}

/// A task of the profile.
#[derive(Clone, Debug)]
struct Task {
    name: String,
    manifest_path: PathBuf,
    /// where its cases are (under `--data-root` unless the manifest's `dataset` is absolute)
    dataset_dir: PathBuf,
}

fn load_tasks(profile: &Profile, data_root: &Path) -> anyhow::Result<Vec<Task>> {
    let mut tasks = Vec::new();
    let mut seen = BTreeSet::new();
    for t in &profile.tasks {
        let path = PathBuf::from(t);
        let m = Manifest::load(&path).with_context(|| {
            format!("cannot load the task manifest {t} (paths are relative to the current folder, normally the repository root)")
        })?;
        if !seen.insert(m.name.clone()) {
            bail!("two task manifests are named `{}` ({t})", m.name);
        }
        tasks.push(Task {
            dataset_dir: m.dataset_dir(Some(data_root)),
            name: m.name,
            manifest_path: path,
        });
    }
    Ok(tasks)
}

struct Ctx<'a> {
    opts: &'a Options,
    profile_file: PathBuf,
    model: PathBuf,
}

impl Ctx<'_> {
    fn common(&self, step: Step) -> Step {
        step.logging(self.opts.child_verbosity, true)
            .arg("--profile")
            .arg(&self.profile_file)
    }

    /// A step that reads task `t`'s cases.
    fn data(&self, t: &Task, mut step: Step) -> Step {
        step.data_dirs.push(t.dataset_dir.clone());
        step.arg("--data-root").arg(&self.opts.data_root)
    }
}

/// Steps before the splits exist: synthetic datasets and splits.
fn plan_prepare(ctx: &Ctx, profile: &Profile, tasks: &[Task]) -> Vec<Step> {
    let mut steps = Vec::new();
    if let Some(synth) = &profile.synth {
        for (folder, kind) in &synth.datasets {
            let [x, y, z] = synth.size;
            // No outputs: clopa-synth itself skips complete cases and refuses a folder written
            // with other settings, which a plain existence check could not notice.
            let step = Step::new(format!("synth {folder}"), "clopa-synth", vec![])
                .args(["--task", kind.as_str(), "--cases"])
                .arg(synth.cases.to_string())
                .arg("--seed")
                .arg(synth.seed.to_string())
                .arg("--size")
                .arg(format!("{x},{y},{z}"))
                .arg("-o")
                .arg(ctx.opts.data_root.join(folder))
                .logging(ctx.opts.child_verbosity.map(|_| 1), false);
            steps.push(step);
        }
    }
    for t in tasks {
        let out = layout::split(&ctx.opts.out, &t.name);
        let step = Step::new(
            format!("split {}", t.name),
            "clopa-split",
            vec![out.clone()],
        )
        .arg(&t.manifest_path)
        .arg("-o")
        .arg(&out);
        steps.push(ctx.data(t, ctx.common(step)));
    }
    steps
}

/// Everything after the splits.
fn plan_rest(
    ctx: &Ctx,
    profile: &Profile,
    tasks: &[Task],
    splits: &BTreeMap<String, Vec<SplitRow>>,
) -> Vec<Step> {
    let out = &ctx.opts.out;
    let mut steps = Vec::new();
    for t in tasks {
        let split = layout::split(out, &t.name);
        let simulate = |label: String, dest: PathBuf| {
            let s = Step::new(label, "clopa-simulate", vec![dest.clone()])
                .arg("--model")
                .arg(&ctx.model)
                .arg("--manifest")
                .arg(&t.manifest_path)
                .arg("--split")
                .arg(&split)
                .arg("-o")
                .arg(dest);
            ctx.data(t, ctx.common(s))
        };
        let base = layout::base_steps(out, &t.name);
        steps.push(simulate(format!("simulate {} base", t.name), base.clone()));
        let mut all_steps = vec![base];
        let episodes = splits
            .get(&t.name)
            .map(|rows| episodes_per_run(rows))
            .unwrap_or_default();
        for (&run, eps) in &episodes {
            for method in &profile.methods {
                let mut chain: Vec<PathBuf> = Vec::new();
                for &ep in eps {
                    let ckpt = layout::checkpoint(out, &t.name, method, run, ep);
                    let log = layout::train_log(out, &t.name, method, run, ep);
                    let mut train = Step::new(
                        format!("train {} {method} run{run} ep{ep}", t.name),
                        "clopa-train-episode",
                        vec![ckpt.clone(), log],
                    )
                    .arg("--model")
                    .arg(&ctx.model)
                    .arg("--manifest")
                    .arg(&t.manifest_path)
                    .arg("--split")
                    .arg(&split)
                    .arg("--run")
                    .arg(run.to_string())
                    .arg("--episode")
                    .arg(ep.to_string())
                    .arg("--group")
                    .arg(method)
                    .arg("-o")
                    .arg(&ckpt);
                    // Warm start: the previous episodes' checkpoints, applied in order.
                    for prev in &chain {
                        train = train.arg("--init").arg(prev);
                    }
                    steps.push(ctx.data(t, ctx.common(train)));
                    chain.push(ckpt);
                    let dest = layout::episode_steps(out, &t.name, method, run, ep);
                    let mut sim = simulate(
                        format!("simulate {} {method} run{run} ep{ep}", t.name),
                        dest.clone(),
                    );
                    for c in &chain {
                        sim = sim.arg("--checkpoint").arg(c);
                    }
                    sim = sim
                        .arg("--method")
                        .arg(method)
                        .arg("--run")
                        .arg(run.to_string());
                    steps.push(sim);
                    all_steps.push(dest);
                }
            }
        }
        let eval_dir = layout::eval_dir(out, &t.name);
        let outputs = clopa_cli::outputs::EVAL
            .iter()
            .map(|n| eval_dir.join(n))
            .collect();
        let eval = Step::new(format!("eval {}", t.name), "clopa-eval", outputs)
            .args(all_steps)
            .arg("--manifest")
            .arg(&t.manifest_path)
            .arg("--split")
            .arg(&split)
            .arg("-o")
            .arg(&eval_dir);
        steps.push(eval.logging(ctx.opts.child_verbosity, false));
    }
    steps
}

fn rank_step(ctx: &Ctx) -> Step {
    let out = &ctx.opts.out;
    let outputs = clopa_cli::outputs::RANK
        .iter()
        .map(|n| out.join(n))
        .collect();
    let mut s = Step::new("rank".into(), "clopa-rank", outputs)
        .arg(out.join("cases.parquet"))
        .arg("--final")
        .arg(out.join("final.parquet"))
        .arg("--trajectory")
        .arg(out.join("trajectory.parquet"))
        .arg("-o")
        .arg(out);
    // The base rows are nnInteractive's only when the base model is nnInteractive's own folder
    // (`nnInteractive_v1.0`, the paper's profile); any other, e.g. the CPU profiles' tiny model,
    // is named by its folder (as resolved: `models/x/..` names `models`).
    let folder = std::fs::canonicalize(&ctx.model).unwrap_or_else(|_| ctx.model.clone());
    if let Some(name) = folder.file_name().map(|n| n.to_string_lossy())
        && !(name == "nnInteractive" || name.starts_with("nnInteractive_v"))
    {
        s = s.arg("--base-label").arg(name.as_ref());
    }
    s.logging(ctx.opts.child_verbosity, false)
}

fn run_step(step: &Step, bin_dir: &Path) -> anyhow::Result<()> {
    let program = bin_dir.join(&step.program);
    tracing::debug!("$ {}", step.command_line(bin_dir));
    let mut cmd = std::process::Command::new(&program);
    cmd.args(&step.args)
        .args(step.log_flag.iter())
        .stdin(std::process::Stdio::null());
    end_with_this_process(&mut cmd);
    let status = cmd
        .status()
        .with_context(|| format!("cannot start {}", program.display()))?;
    if !status.success() {
        bail!(
            "step `{}` failed ({status}); command:\n  {}",
            step.label,
            step.command_line(bin_dir)
        );
    }
    Ok(())
}

/// Makes the step end when clopa-reproduce does. A signal to clopa-reproduce's pid alone (`kill
/// -TERM`, `kill -9`; Ctrl-C and `timeout` signal the whole group anyway) would otherwise leave
/// the step running on its own, still writing while a rerun starts the same step. Linux only
/// (`PR_SET_PDEATHSIG`, bound to the spawning thread: steps are spawned and awaited on one).
#[cfg(target_os = "linux")]
fn end_with_this_process(cmd: &mut std::process::Command) {
    use std::os::unix::process::CommandExt;
    let parent = std::process::id() as libc::pid_t;
    // SAFETY: the closure runs between fork and exec and calls only async-signal-safe functions
    // (prctl, getppid) and allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // clopa-reproduce may have died before the prctl took effect.
            if libc::getppid() != parent {
                return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
            }
            Ok(())
        });
    }
}

#[cfg(not(target_os = "linux"))]
fn end_with_this_process(_: &mut std::process::Command) {}

/// Binaries the profile needs that `bin_dir` lacks.
pub fn missing_binaries(profile: &Profile, bin_dir: &Path) -> Vec<String> {
    let mut need = vec!["clopa-split", "clopa-simulate", "clopa-eval", "clopa-rank"];
    if profile.synth.is_some() {
        need.push("clopa-synth");
    }
    if !profile.methods.is_empty() {
        need.push("clopa-train-episode");
    }
    need.into_iter()
        .filter(|b| {
            !bin_dir
                .join(format!("{b}{}", std::env::consts::EXE_SUFFIX))
                .is_file()
        })
        .map(String::from)
        .collect()
}

/// What a run needs before its first step, checked: the resolved profile, its tasks and the
/// base model folder (the tools, the model and the settings a tool would refuse only later).
fn setup(opts: &Options) -> anyhow::Result<(Profile, Vec<Task>, PathBuf)> {
    let profile = resolve_profile(opts)?;
    clopa_cli::check_output_dir(&opts.out)?;
    let missing = missing_binaries(&profile, &opts.bin_dir);
    if !missing.is_empty() {
        bail!(
            "{} lacks {}; build them first, e.g. `cargo build --release -p {}`",
            opts.bin_dir.display(),
            missing.join(", "),
            missing.join(" -p ")
        );
    }
    let tasks = load_tasks(&profile, &opts.data_root)?;
    let model = PathBuf::from(&profile.model);
    if !model.join("model.json").is_file() {
        // the shipped tiny model is rebuilt by `just pretrain`; any other is imported
        let how = if model.ends_with("clopa-tiny") {
            "run `just pretrain`".to_string()
        } else {
            format!(
                "import it with `clopa-import path/to/<nnU-Net model folder> -o {}`",
                model.display()
            )
        };
        bail!(
            "the base model folder {} has no model.json ({how}, or give --model)",
            model.display()
        );
    }
    preflight(&profile, &model)?;
    Ok((profile, tasks, model))
}

/// The step that merges the task tables: run here, not as a command; what clopa-merge does with
/// these tables, kind by kind. The arguments (the task tables) serve is_done's time check and
/// the record.
fn merge_step(out: &Path, tasks: &[Task]) -> Step {
    let outputs = clopa_cli::outputs::EVAL
        .iter()
        .map(|n| out.join(n))
        .collect();
    Step::new("merge the task tables".into(), "clopa-merge", outputs).args(
        clopa_cli::outputs::EVAL.iter().flat_map(|name| {
            tasks
                .iter()
                .map(move |t| layout::eval_dir(out, &t.name).join(name))
        }),
    )
}

/// One step of [`plan`]: what it is, its command line, and why it would run (`None`: done).
#[derive(Clone, Debug)]
pub struct Planned {
    pub label: String,
    pub command: String,
    pub why: Option<String>,
}

/// What [`reproduce`] would do now, step by step, without running or writing anything (`-n`).
/// The steps after the splits are listed only when every split exists (the episode schedule
/// comes from them): the flag says whether the list is complete. A step that would run makes
/// every later step that reads one of its outputs run too, as it would then be newer.
pub fn plan(opts: &Options) -> anyhow::Result<(Vec<Planned>, bool)> {
    let (profile, tasks, model) = setup(opts)?;
    let profile_file = layout::profile(&opts.out);
    if let Ok(old) = std::fs::read_to_string(&profile_file)
        && old != profile.to_toml_string()?
    {
        bail!(
            "{} holds another profile than this run's: a run would refuse this folder",
            profile_file.display()
        );
    }
    let commands = Commands::load(&opts.out);
    let ctx = Ctx {
        opts,
        profile_file,
        model,
    };
    let mut remade: BTreeSet<PathBuf> = BTreeSet::new();
    let mut planned = Vec::new();
    let mut judge = |step: &Step| {
        let why = if step.outputs.is_empty() {
            // clopa-synth: runs every time, and changes nothing that is current
            Some("the tool checks what is done".to_string())
        } else {
            let why = step
                .args
                .iter()
                .map(Path::new)
                .find(|a| remade.contains(*a))
                .map(|a| format!("{} would be remade first", a.display()))
                .or_else(|| step.pending())
                .or_else(|| commands.not_made(step));
            if why.is_some() {
                remade.extend(step.outputs.iter().cloned());
            }
            why
        };
        planned.push(Planned {
            label: step.label.clone(),
            command: step.command_line(&opts.bin_dir),
            why,
        });
    };
    for step in plan_prepare(&ctx, &profile, &tasks) {
        judge(&step);
    }
    let mut splits = BTreeMap::new();
    for t in &tasks {
        match clopa_table::read_split(&layout::split(&opts.out, &t.name)) {
            Ok(rows) => {
                splits.insert(t.name.clone(), rows);
            }
            Err(_) => return Ok((planned, false)),
        }
    }
    for step in plan_rest(&ctx, &profile, &tasks, &splits) {
        judge(&step);
    }
    judge(&merge_step(&opts.out, &tasks));
    judge(&rank_step(&ctx));
    Ok((planned, true))
}

/// Runs the whole chain. `progress(step, index, total)` is called before each step (the total
/// grows once the splits are known).
pub fn reproduce(
    opts: &Options,
    progress: &mut dyn FnMut(&Step, usize, usize),
) -> anyhow::Result<Summary> {
    let (profile, tasks, model) = setup(opts)?;
    std::fs::create_dir_all(&opts.out)
        .with_context(|| format!("cannot create the output folder {}", opts.out.display()))?;
    let _lock = lock_run_folder(&opts.out)?;
    let profile_file = layout::profile(&opts.out);
    let text = profile.to_toml_string()?;
    let mut resumed = false;
    match std::fs::read_to_string(&profile_file) {
        Ok(old) if old == text => resumed = true,
        Ok(_) => bail!(
            "{} holds another profile than this run's: its outputs would mix settings; \
             choose another -o or remove that folder",
            profile_file.display()
        ),
        Err(_) => clopa_cli::write_atomic(&profile_file, |f| {
            use std::io::Write;
            Ok(f.write_all(text.as_bytes())?)
        })?,
    }
    let ctx = Ctx {
        opts,
        profile_file,
        model,
    };
    let commands = Commands::load(&opts.out);
    if resumed && !commands.found {
        tracing::info!(
            "{} has no {} (a run folder from before clopa-reproduce kept one, or it was \
             removed): every step runs once more; clopa-simulate and clopa-train-episode keep \
             the outputs whose settings and inputs match, the other tools rewrite theirs",
            opts.out.display(),
            Commands::FILE
        );
    }
    let mut runner = Runner {
        summary: Summary::default(),
        progress,
        commands,
        bin_dir: &opts.bin_dir,
    };
    let prepare = plan_prepare(&ctx, &profile, &tasks);
    // Two phases, each counted on its own in the log: how many steps the protocol has is only
    // known once the splits (written by the first phase) give the episode schedule.
    let mut total = prepare.len() + tasks.len() * 2 + 2;
    for (i, step) in prepare.iter().enumerate() {
        let at = Counter {
            phase: "data",
            i,
            n: prepare.len(),
        };
        runner.tool(step, (i, total), at)?;
    }
    let mut splits = BTreeMap::new();
    for t in &tasks {
        let path = layout::split(&opts.out, &t.name);
        let rows = clopa_table::read_split(&path)?;
        // Without an episode the methods would be left out of every table without a word.
        let per_run = episodes_per_run(&rows);
        if per_run.values().all(|e| e.is_empty()) {
            // Every run of this profile stops here, so the folder holds nothing past the splits:
            // without its profile.toml a corrected profile may run into the same -o.
            let _ = std::fs::remove_file(&ctx.profile_file);
            let stream = rows.iter().filter(|r| r.run == Some(0)).count();
            bail!(
                "{}: no training run of task {} has an episode (a stream of {stream} cases; an \
                 episode needs 1/k_m = {:.1} of them), so the methods {:?} have nothing to \
                 train on: raise max_stream or k_m, or use a task with more cases",
                path.display(),
                t.name,
                1.0 / profile.k_m,
                profile.methods
            );
        }
        splits.insert(t.name.clone(), rows);
    }
    let rest = plan_rest(&ctx, &profile, &tasks, &splits);
    let rank = rank_step(&ctx);
    total = prepare.len() + rest.len() + 2;
    let at = |j: usize| Counter {
        phase: "protocol",
        i: j,
        n: rest.len() + 2,
    };
    let mut i = prepare.len();
    for (j, step) in rest.iter().enumerate() {
        runner.tool(step, (i, total), at(j))?;
        i += 1;
    }
    // The merge runs here, as the step clopa-merge would be.
    runner.exec(
        &merge_step(&opts.out, &tasks),
        (i, total),
        at(rest.len()),
        |_| {
            for name in clopa_cli::outputs::EVAL {
                let inputs: Vec<PathBuf> = tasks
                    .iter()
                    .map(|t| layout::eval_dir(&opts.out, &t.name).join(name))
                    .collect();
                merge_tables(&inputs, &opts.out.join(name), "clopa-reproduce")?;
            }
            Ok(())
        },
    )?;
    i += 1;
    runner.tool(&rank, (i, total), at(rest.len() + 1))?;
    Ok(runner.summary)
}

/// Takes `OUT/.clopa-reproduce.lock` for as long as the returned file is open (the system drops
/// the lock when the process ends, however it ends). A second clopa-reproduce on the same folder
/// would run the same steps at the same time: every tool writes atomically, but both would do
/// the work, and each would overwrite the other's record of it in commands.json.
fn lock_run_folder(out: &Path) -> anyhow::Result<File> {
    use std::io::{Read, Seek, Write};
    let path = out.join(".clopa-reproduce.lock");
    let mut f = File::options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    match f.try_lock() {
        Ok(()) => {
            // the holder's pid, for the message of the one refused
            f.set_len(0)?;
            f.rewind()?;
            write!(f, "{}", std::process::id())?;
            Ok(f)
        }
        Err(std::fs::TryLockError::WouldBlock) => {
            let mut pid = String::new();
            let _ = f.read_to_string(&mut pid);
            bail!(
                "another clopa-reproduce (pid {}) is running in {}: wait for it to end, or give \
                 another -o",
                pid.trim(),
                out.display()
            )
        }
        // A file system without locks (some network mounts): run unguarded, as before.
        Err(std::fs::TryLockError::Error(e)) => {
            tracing::warn!(
                "cannot lock {} ({e}): runs into this folder are not guarded",
                path.display()
            );
            Ok(f)
        }
    }
}

/// A step's place within its phase, as the log shows it: `data [2/6]`.
#[derive(Clone, Copy)]
struct Counter {
    phase: &'static str,
    i: usize,
    n: usize,
}

impl std::fmt::Display for Counter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} [{}/{}]", self.phase, self.i + 1, self.n)
    }
}

/// What the steps of one run share: the tally, the progress callback, the record of what made
/// each output, and where the tools are.
struct Runner<'a> {
    summary: Summary,
    progress: &'a mut dyn FnMut(&Step, usize, usize),
    commands: Commands,
    bin_dir: &'a Path,
}

impl Runner<'_> {
    /// [`Runner::exec`] of a tool's step: runs the tool.
    fn tool(&mut self, step: &Step, place: (usize, usize), at: Counter) -> anyhow::Result<()> {
        let bin_dir = self.bin_dir;
        self.exec(step, place, at, |s| run_step(s, bin_dir))
    }

    /// Reports, then runs a step (`run`) unless it is done. `(i, total)` is the step's place in
    /// the whole run (for the progress callback), `at` its place in its phase (for the log).
    fn exec(
        &mut self,
        step: &Step,
        (i, total): (usize, usize),
        at: Counter,
        run: impl FnOnce(&Step) -> anyhow::Result<()>,
    ) -> anyhow::Result<()> {
        (self.progress)(step, i, total);
        if step.outputs.is_empty() {
            tracing::info!("{at} {} (the tool skips what is done)", step.label);
            run(step)?;
            self.summary.checked += 1;
            return Ok(());
        }
        if step.is_done() {
            let Some(not_made) = self.commands.not_made(step) else {
                tracing::debug!("{at} skip {} (done)", step.label);
                self.summary.skipped += 1;
                return Ok(());
            };
            let why = format!("{at} {} ({not_made}: it runs again)", step.label);
            // Without a record at all the run started with one line saying why every step runs.
            if self.commands.found {
                tracing::info!("{why}");
            } else {
                tracing::debug!("{why}");
            }
        } else {
            tracing::info!("{at} {}", step.label);
        }
        run(step)?;
        step.mark_current()?;
        self.commands.record_or_warn(step);
        self.summary.ran += 1;
        Ok(())
    }
}

/// Concatenates Parquet tables of one schema (clopa-eval's per-task outputs) into `out`,
/// atomically, recording `tool` as the writer (clopa-reproduce, or clopa-merge for a user). The
/// key-value metadata is the first input's, except `clopa.settings`: the first input's settings
/// with `threshold` kept only when every input agrees (else null), plus `thresholds` (one per
/// input), `task_thresholds` and `sources` (the input paths). A task in two inputs is an error
/// (its rows would count twice in the ranking).
pub fn merge_tables(inputs: &[PathBuf], out: &Path, tool: &str) -> anyhow::Result<()> {
    let Some(first) = inputs.first() else {
        bail!("nothing to merge into {}", out.display());
    };
    let mut schema: Option<Arc<Schema>> = None;
    let mut batches: Vec<RecordBatch> = Vec::new();
    let mut settings_list = Vec::new();
    // task -> threshold, for Fig. 2's per-task red lines when the tasks' thresholds differ
    let mut task_thresholds = serde_json::Map::new();
    // task -> the input it came from (an index: the same file given twice is two inputs)
    let mut task_files: BTreeMap<String, usize> = BTreeMap::new();
    for (k, path) in inputs.iter().enumerate() {
        let file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
        let builder = ParquetRecordBatchReaderBuilder::try_new(file)
            .with_context(|| format!("{} is not a Parquet file", path.display()))?;
        let kv = builder
            .metadata()
            .file_metadata()
            .key_value_metadata()
            .cloned()
            .unwrap_or_default();
        let settings = kv
            .iter()
            .find(|k| k.key == clopa_table::KEY_SETTINGS)
            .and_then(|k| k.value.as_deref())
            .and_then(|v| serde_json::from_str::<serde_json::Value>(v).ok())
            .unwrap_or(serde_json::Value::Null);
        let threshold = settings["threshold"].clone();
        settings_list.push(settings);
        // Arrow schemas carry the file's metadata; compare the fields only, with text as plain
        // Utf8: clopa-eval has written Utf8View (before clopa-frame wrote LargeUtf8), and a run
        // folder resumed across that change holds both.
        let this = Schema::new(
            builder
                .schema()
                .fields()
                .iter()
                .map(|f| match f.data_type() {
                    DataType::LargeUtf8 | DataType::Utf8View => {
                        Arc::new(f.as_ref().clone().with_data_type(DataType::Utf8))
                    }
                    _ => f.clone(),
                })
                .collect::<Vec<_>>(),
        );
        match &schema {
            None => schema = Some(Arc::new(this.clone())),
            Some(s) if s.fields() != this.fields() => bail!(
                "{} has other columns than {}: cannot merge them into {}",
                path.display(),
                first.display(),
                out.display()
            ),
            Some(_) => {}
        }
        let reader = builder
            .build()
            .with_context(|| format!("cannot read {}", path.display()))?;
        for b in reader {
            let b = b.with_context(|| format!("cannot read {}", path.display()))?;
            for task in task_names(&b)
                .with_context(|| format!("cannot read the tasks of {}", path.display()))?
            {
                match task_files.get(task.as_str()) {
                    Some(&other) if other != k => bail!(
                        "task {task:?} is in both {} and {}: cannot merge them into {} \
                         (its rows would count twice)",
                        inputs[other].display(),
                        path.display(),
                        out.display()
                    ),
                    Some(_) => {}
                    None => {
                        task_files.insert(task.clone(), k);
                    }
                }
                if !threshold.is_null() {
                    task_thresholds.insert(task, threshold.clone());
                }
            }
            let columns = b
                .columns()
                .iter()
                .zip(this.fields())
                .map(|(c, f)| arrow::compute::cast(c, f.data_type()))
                .collect::<Result<Vec<_>, _>>()
                .with_context(|| format!("cannot read {}", path.display()))?;
            let s = schema.clone().unwrap_or_else(|| Arc::new(this.clone()));
            batches.push(
                RecordBatch::try_new(s, columns)
                    .with_context(|| format!("cannot read {}", path.display()))?,
            );
        }
    }
    let schema = schema.unwrap_or_else(|| Arc::new(Schema::empty()));
    let thresholds: Vec<serde_json::Value> = settings_list
        .iter()
        .map(|s| s["threshold"].clone())
        .collect();
    let mut settings = match settings_list.first() {
        Some(serde_json::Value::Object(m)) => serde_json::Value::Object(m.clone()),
        _ => serde_json::json!({}),
    };
    let common = thresholds.windows(2).all(|w| w[0] == w[1]);
    settings["threshold"] = if common {
        thresholds
            .first()
            .cloned()
            .unwrap_or(serde_json::Value::Null)
    } else {
        serde_json::Value::Null
    };
    settings["thresholds"] = serde_json::Value::Array(thresholds);
    settings["task_thresholds"] = serde_json::Value::Object(task_thresholds);
    settings["sources"] = serde_json::Value::Array(
        inputs
            .iter()
            .map(|p| serde_json::Value::String(p.display().to_string()))
            .collect(),
    );
    let prov = Provenance::new(tool, env!("CARGO_PKG_VERSION"), settings, 0);
    clopa_table::write_batches(out, schema, &batches, &prov)
        .with_context(|| format!("cannot write {}", out.display()))?;
    Ok(())
}

/// The distinct values of a batch's `task` column (none if it has no such column).
fn task_names(b: &RecordBatch) -> anyhow::Result<BTreeSet<String>> {
    let Some(col) = b.column_by_name("task") else {
        return Ok(BTreeSet::new());
    };
    // clopa-frame writes LargeUtf8, arrow-rs Utf8 (other polars writers Utf8View): cast to one
    let col = arrow::compute::cast(col, &arrow::datatypes::DataType::Utf8)?;
    let col = col
        .as_any()
        .downcast_ref::<arrow::array::StringArray>()
        .context("the task column is not text")?;
    Ok(col.iter().flatten().map(str::to_string).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clopa_table::{Role, SplitKind};

    fn row(run: Option<u32>, episode: Option<u32>) -> SplitRow {
        SplitRow {
            task: "t".into(),
            case_id: "c".into(),
            split: if run.is_some() {
                SplitKind::Train
            } else {
                SplitKind::Holdout
            },
            run,
            position: run.map(|_| 1),
            episode,
            role: episode.map(|_| Role::Train),
        }
    }

    #[test]
    fn episodes_are_collected_per_run_sorted() {
        let rows = vec![
            row(None, None),
            row(Some(1), Some(2)),
            row(Some(0), Some(2)),
            row(Some(0), Some(1)),
            row(Some(0), None),
            row(Some(1), Some(1)),
            row(Some(1), Some(2)),
        ];
        let e = episodes_per_run(&rows);
        assert_eq!(e.len(), 2);
        assert_eq!(e[&0], vec![1, 2]);
        assert_eq!(e[&1], vec![1, 2]);
    }

    #[test]
    fn quoting_and_done() {
        assert_eq!(quote("a/b-c.parquet"), "a/b-c.parquet");
        assert_eq!(quote("a b"), "'a b'");
        assert_eq!(quote("it's"), "'it'\\''s'");
        let dir = tempfile::tempdir().expect("tmp");
        let a = dir.path().join("a");
        let s = Step::new("x".into(), "p", vec![a.clone(), dir.path().join("b")]);
        assert!(!s.is_done());
        std::fs::write(&a, "1").expect("write");
        assert!(!s.is_done());
        std::fs::write(dir.path().join("b"), "1").expect("write");
        assert!(s.is_done());
        assert!(!Step::new("y".into(), "p", vec![]).is_done());
        std::fs::write(&a, "").expect("write");
        assert!(!s.is_done(), "an emptied output is not done");
    }

    /// commands.json: a step's outputs count as its own only when recorded with its command
    /// (logging flags and the binaries' folder aside) and unchanged since; the record survives
    /// a reload.
    #[test]
    fn commands_record_what_made_each_output() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let out = dir.path();
        std::fs::create_dir(out.join("t"))?;
        let step = |args: &[&str], verbosity| {
            Step::new(
                "s".into(),
                "clopa-x",
                vec![out.join("t/a.parquet"), out.join("b")],
            )
            .args(args.iter().copied())
            .logging(verbosity, true)
        };
        let mut c = Commands::load(out);
        let made = step(&["--edits", "3"], None);
        assert!(c.record(&made).is_err(), "outputs not written");
        std::fs::write(out.join("t/a.parquet"), "table")?;
        std::fs::write(out.join("b"), "log")?;
        assert!(!c.made(&made), "nothing recorded yet");
        c.record(&made)?;
        assert!(c.made(&made));
        assert!(
            c.made(&step(&["--edits", "3"], Some(2))),
            "-q / -vv is no change"
        );
        assert!(
            !c.made(&step(&["--edits", "2"], None)),
            "another argument is"
        );
        assert!(
            !c.made(&Step::new("s".into(), "clopa-x", vec![])),
            "no outputs"
        );
        // every output must be recorded with the command
        let mut partial = step(&["--edits", "3"], None);
        partial.outputs.push(out.join("c"));
        std::fs::write(out.join("c"), "x")?;
        assert!(!c.made(&partial));

        let reloaded = Commands::load(out);
        assert!(reloaded.made(&made));
        let text = std::fs::read_to_string(out.join(Commands::FILE))?;
        assert!(
            text.contains("\"command\": \"clopa-x --edits 3\""),
            "{text}"
        );
        assert!(text.contains("\"t/a.parquet\": {"), "{text}");
        assert_eq!(
            made.command_line(Path::new("bin")),
            "bin/clopa-x --edits 3 -q"
        );

        // An output replaced since (same size, later time: by hand, or another tool) is not.
        let f = File::options().write(true).open(out.join("b"))?;
        f.set_modified(std::time::SystemTime::now() + std::time::Duration::from_secs(5))?;
        assert!(!reloaded.made(&made));

        // An unreadable record is an empty one: every step then checks its outputs.
        c.record(&made)?;
        assert!(Commands::load(out).made(&made));
        std::fs::write(out.join(Commands::FILE), "[1, 2")?;
        assert!(!Commands::load(out).made(&made));
        Ok(())
    }

    /// One run per folder at a time: a second lock of the same folder is refused naming the first
    /// holder's pid, and the lock ends with its file.
    #[test]
    fn a_second_run_into_the_same_folder_is_refused() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let first = lock_run_folder(dir.path())?;
        let e = lock_run_folder(dir.path()).expect_err("locked twice");
        let msg = format!("{e:#}");
        assert!(
            msg.contains(&format!("(pid {})", std::process::id())) && msg.contains("is running in"),
            "{msg}"
        );
        drop(first);
        lock_run_folder(dir.path())?;
        Ok(())
    }

    /// The recorded command does not depend on how the run folder or other paths are spelled.
    #[test]
    fn recipes_name_paths_the_same_however_spelled() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        std::fs::create_dir(dir.path().join("run"))?;
        std::fs::create_dir(dir.path().join("data"))?;
        let data_spellings = [
            dir.path().join("data"),
            dir.path().join(".").join("data").join(""),
            dir.path().join("run").join("..").join("data"),
        ];
        let recipes: Vec<String> = [dir.path().join("run"), dir.path().join(".").join("run")]
            .iter()
            .zip(&data_spellings)
            .map(|(out, data)| {
                let step = Step::new("s".into(), "clopa-x", vec![out.join("a.parquet")])
                    .arg(out.join("t").join("split.parquet"))
                    .args(["--run", "0", "--data-root"])
                    .arg(data)
                    .arg("-o")
                    .arg(out);
                Commands::load(out).recipe(&step)
            })
            .collect();
        assert_eq!(recipes[0], recipes[1]);
        let data = std::fs::canonicalize(dir.path().join("data"))?;
        assert_eq!(
            recipes[0],
            format!(
                "clopa-x '$OUT/t/split.parquet' --run 0 --data-root {} -o '$OUT'",
                data.display()
            )
        );
        let step = |data: &Path| {
            Step::new("s".into(), "clopa-x", vec![])
                .arg("--data-root")
                .arg(data)
        };
        let c = Commands::load(&dir.path().join("run"));
        assert_eq!(c.recipe(&step(&data_spellings[2])), c.recipe(&step(&data)));
        // a relative path is made absolute; a bare word stays a word
        let step = Step::new("s".into(), "clopa-x", vec![]).args(["data-manifests/x.toml", "in"]);
        let cwd = std::env::current_dir()?;
        assert_eq!(
            c.recipe(&step),
            format!("clopa-x {}/data-manifests/x.toml in", cwd.display())
        );
        Ok(())
    }

    /// make's rule: an input rewritten after the outputs makes the step run again.
    #[test]
    fn an_input_newer_than_the_outputs_is_not_done() {
        let dir = tempfile::tempdir().expect("tmp");
        let (input, out) = (dir.path().join("in.txt"), dir.path().join("out.txt"));
        std::fs::write(&input, "1").expect("write");
        std::fs::write(&out, "1").expect("write");
        let s = Step::new("x".into(), "p", vec![out.clone()])
            .arg("--flag")
            .arg(&input)
            .arg(dir.path().join("missing"));
        let at = |p: &Path, secs: u64| {
            let t = std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(secs);
            File::options()
                .write(true)
                .open(p)
                .expect("open")
                .set_modified(t)
                .expect("touch");
        };
        at(&input, 1_000);
        at(&out, 2_000);
        assert!(s.is_done());
        at(&input, 3_000);
        assert!(!s.is_done());

        // a model folder counts by its weights
        let model = dir.path().join("model");
        std::fs::create_dir(&model).expect("mkdir");
        for f in ["model.json", "model.safetensors"] {
            std::fs::write(model.join(f), "1").expect("write");
            at(&model.join(f), 1_000);
        }
        at(&input, 1_000);
        let s = s.arg("--model").arg(&model);
        assert!(s.is_done());
        at(&model.join("model.safetensors"), 3_000);
        assert!(!s.is_done(), "a model re-baked after the outputs");

        // a dataset folder counts by its files, one folder down too
        at(&model.join("model.safetensors"), 1_000);
        let data = dir.path().join("Task09_Spleen");
        std::fs::create_dir_all(data.join("labelsTr")).expect("mkdir");
        let (json, label) = (
            data.join("dataset.json"),
            data.join("labelsTr/spleen_2.nii.gz"),
        );
        for f in [&json, &label] {
            std::fs::write(f, "1").expect("write");
            at(f, 1_000);
        }
        let mut s = s;
        s.data_dirs.push(data);
        assert!(s.is_done());
        at(&label, 3_000);
        assert!(!s.is_done(), "a label file replaced after the outputs");
        at(&label, 1_000);
        at(&json, 3_000);
        assert!(!s.is_done(), "dataset.json rewritten after the outputs");
    }

    #[test]
    fn truncated_tables_and_checkpoints_are_not_done() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let pq = dir.path().join("t.parquet");
        clopa_table::write_split(
            &pq,
            &[row(None, None)],
            &Provenance::new("x", "0", serde_json::json!({}), 0),
        )?;
        let st = dir.path().join("c.safetensors");
        let t = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![2], &[0u8; 8])?;
        safetensors::serialize_to_file([("w", t)], None, &st)?;
        for p in [&pq, &st] {
            let s = Step::new("x".into(), "p", vec![p.clone()]);
            assert!(s.is_done(), "{}", p.display());
            let bytes = std::fs::read(p)?;
            std::fs::write(p, &bytes[..bytes.len() - 3])?;
            assert!(!s.is_done(), "{} truncated", p.display());
            std::fs::write(p, &bytes)?;
            assert!(s.is_done());
        }
        Ok(())
    }

    #[test]
    fn merge_concatenates_and_reconciles_thresholds() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let mut paths = Vec::new();
        for (i, thr) in [0.8, 0.9].iter().enumerate() {
            let rows = vec![SplitRow {
                task: format!("t{i}"),
                ..row(None, None)
            }];
            let p = dir.path().join(format!("s{i}.parquet"));
            let prov = Provenance::new(
                "x",
                "0",
                serde_json::json!({"threshold": thr, "n_steps": 21}),
                0,
            );
            clopa_table::write_split(&p, &rows, &prov)?;
            paths.push(p);
        }
        let out = dir.path().join("merged.parquet");
        merge_tables(&paths, &out, "clopa-reproduce")?;
        let rows = clopa_table::read_split(&out)?;
        assert_eq!(
            rows.iter().map(|r| r.task.as_str()).collect::<Vec<_>>(),
            ["t0", "t1"]
        );
        let prov = clopa_table::read_provenance(&out)?;
        assert_eq!(prov.tool, "clopa-reproduce");
        assert!(prov.settings["threshold"].is_null());
        assert_eq!(prov.settings["n_steps"], 21);
        assert_eq!(prov.settings["thresholds"], serde_json::json!([0.8, 0.9]));
        assert_eq!(
            prov.settings["task_thresholds"],
            serde_json::json!({"t0": 0.8, "t1": 0.9})
        );
        // A task in two inputs (here the same file twice) would count twice: refused, naming
        // both, and nothing is written.
        let again = dir.path().join("again.parquet");
        let Err(e) = merge_tables(&[paths[0].clone(), paths[0].clone()], &again, "clopa-merge")
        else {
            bail!("the same table twice merged");
        };
        let e = e.to_string();
        assert!(
            e.contains("\"t0\" is in both") && e.contains("s0.parquet"),
            "{e}"
        );
        assert!(!again.exists());
        // Equal thresholds are kept.
        merge_tables(&paths[..1], &out, "clopa-reproduce")?;
        assert_eq!(
            clopa_table::read_provenance(&out)?.settings["threshold"],
            0.8
        );

        // Text as Utf8View (clopa-eval's tables before clopa-frame wrote LargeUtf8) beside Utf8:
        // a run folder resumed across that change merges.
        let view = dir.path().join("view.parquet");
        let file = File::open(&paths[1])?;
        let batches: Vec<RecordBatch> = ParquetRecordBatchReaderBuilder::try_new(file)?
            .build()?
            .collect::<Result<_, _>>()?;
        let cast = |b: &RecordBatch| -> anyhow::Result<RecordBatch> {
            let cols = b
                .columns()
                .iter()
                .map(|c| match c.data_type() {
                    DataType::Utf8 => arrow::compute::cast(c, &DataType::Utf8View),
                    _ => Ok(c.clone()),
                })
                .collect::<Result<Vec<_>, _>>()?;
            Ok(RecordBatch::try_from_iter(
                b.schema()
                    .fields()
                    .iter()
                    .map(|f| f.name().clone())
                    .zip(cols),
            )?)
        };
        let viewed: Vec<RecordBatch> = batches.iter().map(cast).collect::<Result<_, _>>()?;
        assert_eq!(viewed[0].schema().field(0).data_type(), &DataType::Utf8View);
        let mut w =
            parquet::arrow::ArrowWriter::try_new(File::create(&view)?, viewed[0].schema(), None)?;
        for b in &viewed {
            w.write(b)?;
        }
        w.close()?;
        merge_tables(&[paths[0].clone(), view], &out, "clopa-reproduce")?;
        let rows = clopa_table::read_split(&out)?;
        assert_eq!(
            rows.iter().map(|r| r.task.as_str()).collect::<Vec<_>>(),
            ["t0", "t1"]
        );
        Ok(())
    }
}
