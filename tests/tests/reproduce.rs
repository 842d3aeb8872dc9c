//! End to end: `clopa-reproduce` with `pipelines/tiny.toml` on a randomly initialised tiny model
//! runs synth → split → simulate → train episodes → simulate → eval → rank, writes every output,
//! and a rerun skips every step and leaves every file byte-identical; a run killed mid-episode and
//! rerun ends with the same tables.
//!
//! The tools are other packages' binaries, which cargo does not expose to this crate; they are
//! looked up in the target folder this test runs from (`target/<profile>/`). `cargo test
//! --workspace` builds them; with `cargo test -p clopa-e2e` build them first (the failure message
//! says how).

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use arrow::array::{Array, StringArray};
use arrow::datatypes::DataType;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

const TOOLS: [&str; 8] = [
    "clopa-reproduce",
    "clopa-model",
    "clopa-synth",
    "clopa-split",
    "clopa-simulate",
    "clopa-train-episode",
    "clopa-eval",
    "clopa-rank",
];

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// `target/<profile>/`: the test binary lives in its `deps/`.
fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.parent().unwrap().parent().unwrap().to_path_buf()
}

fn tool(name: &str) -> PathBuf {
    let dir = bin_dir();
    let missing: Vec<&str> = TOOLS
        .iter()
        .copied()
        .filter(|t| {
            !dir.join(format!("{t}{}", std::env::consts::EXE_SUFFIX))
                .is_file()
        })
        .collect();
    assert!(
        missing.is_empty(),
        "the end-to-end test needs the tools in {}; missing: {}.\nBuild them first: cargo build -p {}",
        dir.display(),
        missing.join(", "),
        TOOLS.join(" -p ")
    );
    dir.join(name)
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{cmd:?} failed:\n{stderr}");
    stderr
}

/// Sets a file's modification time to now, its contents unchanged.
fn touch(path: &Path) {
    std::fs::File::options()
        .write(true)
        .open(path)
        .unwrap()
        .set_modified(std::time::SystemTime::now())
        .unwrap();
}

/// Every file under `dir` (relative path -> bytes), but clopa-reproduce's lock (the pid of the
/// last run).
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if p.file_name() != Some(".clopa-reproduce.lock".as_ref()) {
                out.insert(
                    p.strip_prefix(dir).unwrap().to_path_buf(),
                    std::fs::read(&p).unwrap(),
                );
            }
        }
    }
    out
}

/// The values of a string column (any of Arrow's string encodings).
fn strings(path: &Path, column: &str) -> Vec<String> {
    let file = std::fs::File::open(path).unwrap();
    let reader = ParquetRecordBatchReaderBuilder::try_new(file)
        .unwrap()
        .build()
        .unwrap();
    let mut out = Vec::new();
    for b in reader {
        let b = b.unwrap();
        let col = b
            .column_by_name(column)
            .unwrap_or_else(|| panic!("{} has no column {column}", path.display()));
        let col = arrow::compute::cast(col, &DataType::Utf8).unwrap();
        let col = col.as_any().downcast_ref::<StringArray>().unwrap();
        for i in 0..col.len() {
            out.push(if col.is_null(i) {
                "<null>".to_string()
            } else {
                col.value(i).to_string()
            });
        }
    }
    out
}

fn count(v: &[String], x: &str) -> usize {
    v.iter().filter(|s| *s == x).count()
}

/// A random tiny network in `dir/model`: enough to exercise the chain (speed, not quality,
/// matters here).
fn tiny_model(dir: &Path) -> PathBuf {
    let model = dir.join("model");
    run(Command::new(tool("clopa-model"))
        .args(["init", "--arch", "tiny", "--features", "4,8,16,32"])
        .args(["--patch", "32", "--seed", "1", "-o"])
        .arg(&model));
    model
}

/// `clopa-reproduce` with the tiny profile into `out`, data under `data`, on `model`.
fn reproduce_cmd(model: &Path, data: &Path, out: &Path) -> Command {
    let mut c = Command::new(tool("clopa-reproduce"));
    c.current_dir(repo_root())
        .args(["--profile", "pipelines/tiny.toml", "-o"])
        .arg(out)
        .arg("--data-root")
        .arg(data)
        .arg("--model")
        .arg(model)
        .env_remove("CLOPA_DATA")
        .env("RAYON_NUM_THREADS", "2");
    c
}

#[test]
fn tiny_profile_end_to_end_then_rerun_skips_everything() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny_model(tmp.path());
    let data = tmp.path().join("data");
    let out = tmp.path().join("run");
    let reproduce_into = |dir: &Path| reproduce_cmd(&model, &data, dir);
    let reproduce = || reproduce_into(&out);
    let first = run(&mut reproduce());
    assert!(first.contains("skipped"), "{first}");

    for name in [
        "profile.toml",
        "table2.md",
        "table3.md",
        "fig2.png",
        "fig2.svg",
        "cases.parquet",
        "episodes.parquet",
        "final.parquet",
        "trajectory.parquet",
        "pairs.parquet",
        "ranking.parquet",
        "synth-vessels/split.parquet",
        "synth-vessels/base/steps.parquet",
    ] {
        assert!(out.join(name).is_file(), "{name} is missing");
    }
    // tiny.toml: one training run, episodes at stream positions 5 and 10, methods in and cn.
    for m in ["in", "cn"] {
        for e in [1, 2] {
            for ext in ["safetensors", "log.parquet", "steps.parquet"] {
                let p = out.join(format!("synth-vessels/{m}/run0/ep{e}.{ext}"));
                assert!(p.is_file(), "{} is missing", p.display());
            }
        }
    }
    assert!(!out.join("synth-vessels/in/run0/ep3.safetensors").exists());

    // 3 evaluated holdout cases x (base + 2 methods x 2 episodes).
    let methods = strings(&out.join("cases.parquet"), "method");
    assert_eq!(methods.len(), 15, "{methods:?}");
    assert_eq!(count(&methods, "base"), 3);
    assert_eq!(count(&methods, "in"), 6);
    assert_eq!(count(&methods, "cn"), 6);
    let methods = strings(&out.join("episodes.parquet"), "method");
    assert_eq!(methods.len(), 5, "{methods:?}");
    // Table 2's input: the final episode of each method, 3 cases each.
    let methods = strings(&out.join("final.parquet"), "method");
    assert_eq!(methods.len(), 9, "{methods:?}");
    // Fig. 2 has the task's expert threshold as its red line.
    let svg = std::fs::read_to_string(out.join("fig2.svg")).unwrap();
    assert_eq!(svg.matches("#FF0000").count(), 1, "one red line");
    let tasks = strings(&out.join("ranking.parquet"), "task");
    assert!(
        !tasks.is_empty() && tasks.iter().all(|t| t == "synth-vessels"),
        "{tasks:?}"
    );
    let ranked = strings(&out.join("ranking.parquet"), "method");
    for m in ["base", "in", "cn"] {
        assert!(ranked.iter().any(|r| r == m), "{m} not ranked: {ranked:?}");
    }
    let table2 = std::fs::read_to_string(out.join("table2.md")).unwrap();
    assert!(table2.contains("synth-vessels"), "{table2}");
    // the base rows carry the base model's folder name: this is not nnInteractive
    assert!(
        table2.contains("| model |") && !table2.contains("nnInteractive"),
        "{table2}"
    );

    // A rerun finds everything done and changes nothing.
    let before = snapshot(&out);
    let second = run(&mut reproduce());
    assert!(second.contains(" 0 steps ran"), "{second}");
    assert_eq!(
        before.keys().collect::<Vec<_>>(),
        snapshot(&out).keys().collect::<Vec<_>>()
    );
    assert!(before == snapshot(&out), "a rerun changed some output");

    // An input rewritten after its outputs (a checkpoint retrained by hand; here only its time)
    // makes the steps that read it, and the steps after those, run again; the tools find their
    // outputs current, and the next rerun has nothing left to do.
    let ep1 = out.join("synth-vessels/in/run0/ep1.safetensors");
    touch(&ep1);
    // -n says what would run and why, and writes nothing.
    let listed = reproduce().arg("-n").output().unwrap();
    assert!(listed.status.success());
    let listed = String::from_utf8(listed.stdout).unwrap();
    for line in [
        "done  split synth-vessels\n",
        "done  simulate synth-vessels base\n",
        "done  train synth-vessels cn run0 ep2\n",
        "run   train synth-vessels in run0 ep1: synth-vessels/in/run0/ep1.safetensors changed \
         since commands.json recorded it\n",
        "run   simulate synth-vessels in run0 ep1: ",
        "run   train synth-vessels in run0 ep2: ",
        "run   rank: ",
    ] {
        assert!(listed.contains(line), "{line:?} not in\n{listed}");
    }
    let touched = snapshot(&out);
    assert!(
        before.keys().eq(touched.keys()) && before == touched,
        "-n changed the folder"
    );
    let third = run(&mut reproduce());
    assert!(!third.contains(" 0 steps ran"), "{third}");
    let fourth = run(&mut reproduce());
    assert!(fourth.contains(" 0 steps ran"), "{fourth}");
    let after = snapshot(&out);
    for name in [
        "table2.md",
        "table3.md",
        "synth-vessels/in/run0/ep2.safetensors",
    ] {
        let k = Path::new(name);
        assert!(
            before[k] == after[k],
            "{name} changed: its inputs' contents did not"
        );
    }

    // A case of the dataset replaced after the outputs (here its label file's time) reruns the
    // task's steps too, though the steps name only the dataset's manifest and root.
    let label = std::fs::read_dir(data.join("synth/vessels/labelsTr"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    touch(&label);
    let fifth = run(&mut reproduce());
    assert!(!fifth.contains(" 0 steps ran"), "{fifth}");
    assert!(fifth.contains("split synth-vessels"), "{fifth}");
    let sixth = run(&mut reproduce());
    assert!(sixth.contains(" 0 steps ran"), "{sixth}");

    // A steps table made by another command (by hand, 2 edits instead of the profile's 5) but
    // newer than its inputs is done by make's rule; commands.json says otherwise, so the step
    // runs and clopa-simulate, finding other settings, recomputes it: the tables come out as
    // before (taken as done, eval would have read 2-edit curves).
    let current = snapshot(&out);
    let base_steps = out.join("synth-vessels/base/steps.parquet");
    let by_hand = tmp.path().join("by-hand.parquet");
    run(Command::new(tool("clopa-simulate"))
        .current_dir(repo_root())
        .args(["-q", "--edits", "2", "--model"])
        .arg(&model)
        .args(["--manifest", "data-manifests/synth-vessels.toml", "--split"])
        .arg(out.join("synth-vessels/split.parquet"))
        .arg("--data-root")
        .arg(&data)
        .arg("--profile")
        .arg(out.join("profile.toml"))
        .arg("-o")
        .arg(&by_hand));
    std::fs::copy(&by_hand, &base_steps).unwrap();
    let commands: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("commands.json")).unwrap()).unwrap();
    let recorded = commands["synth-vessels/base/steps.parquet"]["command"]
        .as_str()
        .unwrap();
    assert!(recorded.starts_with("clopa-simulate "), "{commands}");
    let seventh = run(&mut reproduce());
    assert!(
        seventh.contains(
            "simulate synth-vessels base (synth-vessels/base/steps.parquet changed since \
             commands.json recorded it: it runs again)"
        ),
        "{seventh}"
    );
    let after = snapshot(&out);
    for name in ["table2.md", "table3.md"] {
        let k = Path::new(name);
        assert!(current[k] == after[k], "{name} differs from the last run's");
    }
    // the recomputed table holds the profile's curves again (its `seconds` are new timings)
    let last = tmp.path().join("last.parquet");
    std::fs::write(
        &last,
        &current[Path::new("synth-vessels/base/steps.parquet")],
    )
    .unwrap();
    for column in ["case_id", "step", "dice", "nsd", "fg_clicks", "bg_clicks"] {
        assert_eq!(
            strings(&base_steps, column),
            strings(&last, column),
            "steps.parquet column {column}"
        );
    }

    // The same run folder and data spelled otherwise: nothing to do.
    let eighth = run(&mut reproduce_cmd(
        &model,
        &tmp.path().join(".").join("data"),
        &tmp.path().join(".").join("run"),
    ));
    assert!(eighth.contains(" 0 steps ran"), "{eighth}");

    // A folder without commands.json (written before there was one), rerun with its paths
    // spelled otherwise: every step runs once more, nothing is retrained or re-simulated (the
    // tools compare what the paths name, not how they are spelled), the tables are the same,
    // and the record is back.
    let current = snapshot(&out);
    std::fs::remove_file(out.join("commands.json")).unwrap();
    let ninth = run(&mut reproduce_cmd(
        &model,
        &tmp.path().join(".").join("data"),
        &tmp.path().join(".").join("run"),
    ));
    assert!(ninth.contains("has no commands.json"), "{ninth}");
    assert!(!ninth.contains(" 0 steps ran"), "{ninth}");
    let after = snapshot(&out);
    for (name, bytes) in &current {
        let name = name.to_string_lossy();
        if name.ends_with(".safetensors")
            || name.ends_with("steps.parquet")
            || name.ends_with(".md")
        {
            assert!(after[Path::new(&*name)] == *bytes, "{name} changed");
        }
    }
    let tenth = run(&mut reproduce());
    assert!(tenth.contains(" 0 steps ran"), "{tenth}");

    // Another profile into the same folder is refused: its outputs would mix settings.
    let out3 = reproduce().args(["--set", "edits=3"]).output().unwrap();
    assert_eq!(out3.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out3.stderr).contains("profile.toml"));

    // Killed in the middle of the first episode (the whole process group, so the running tool
    // dies too), then rerun: the same tables as the uninterrupted run.
    let out2 = tmp.path().join("run2");
    let mut c = reproduce_into(&out2);
    c.arg("-q");
    std::os::unix::process::CommandExt::process_group(&mut c, 0);
    let mut child = c.spawn().unwrap();
    let base = out2.join("synth-vessels/base/steps.parquet");
    let t0 = std::time::Instant::now();
    while !base.is_file() {
        assert!(
            child.try_wait().unwrap().is_none(),
            "finished before the kill"
        );
        assert!(
            t0.elapsed().as_secs() < 300,
            "no base simulation after 300 s"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    // the first training episode starts right after the base simulation
    std::thread::sleep(std::time::Duration::from_millis(300));
    // kill(2) on the negated pid: exactly the child's process group, nothing else
    let pgid = libc::pid_t::try_from(child.id()).unwrap();
    assert!(pgid > 1);
    // SAFETY: plain syscall with integer arguments; the group is the child's own (process_group(0)).
    let rc = unsafe { libc::kill(-pgid, libc::SIGKILL) };
    assert_eq!(rc, 0, "kill failed: {}", std::io::Error::last_os_error());
    let status = child.wait().unwrap();
    assert!(!status.success(), "the run was not interrupted");
    assert!(!out2.join("table2.md").exists(), "killed after the end");
    run(&mut reproduce_into(&out2));
    for name in ["table2.md", "table3.md"] {
        assert_eq!(
            std::fs::read_to_string(out.join(name)).unwrap(),
            std::fs::read_to_string(out2.join(name)).unwrap(),
            "{name} differs after an interrupted run"
        );
    }
    for column in [
        "case_id",
        "method",
        "episode",
        "dice_init",
        "dice_final",
        "dice_nauc",
        "noi",
    ] {
        assert_eq!(
            strings(&out.join("cases.parquet"), column),
            strings(&out2.join("cases.parquet"), column),
            "cases.parquet column {column} differs after an interrupted run"
        );
    }
}

/// Settings a tool would only refuse at its own step are refused before anything is written (a
/// written profile.toml would then refuse the corrected profile for that folder), and a split
/// that leaves the methods without an episode is an error, not tables without them.
#[test]
fn unusable_settings_fail_before_the_work_and_a_split_without_episodes_fails() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny_model(tmp.path());
    let data = tmp.path().join("data");
    let reproduce = |dir: &Path, set: &str| {
        reproduce_cmd(&model, &data, dir)
            .args(["-q", "--set", set])
            .output()
            .unwrap()
    };
    for (i, (set, want)) in [
        (
            "patch=[7, 7, 7]",
            "not a multiple of the total stride [8, 8, 8]",
        ),
        ("synth.size=[8, 8, 8]", "between 16 and 512"),
    ]
    .into_iter()
    .enumerate()
    {
        let dir = tmp.path().join(format!("bad{i}"));
        let out = reproduce(&dir, set);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{set}: {err}");
        assert!(err.contains(want), "{set}: {err}");
        assert!(!dir.exists(), "{set}: wrote {}", dir.display());
    }
    // A stream of 4 cases is shorter than one episode (1/k_m = 5 cases).
    let dir = tmp.path().join("short");
    let out = reproduce(&dir, "max_stream=4");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("split.parquet") && err.contains("no training run of task"),
        "{err}"
    );
    assert!(!dir.join("table2.md").exists());
    // ... and the corrected profile may run into the same folder (its profile.toml is gone)
    assert!(!dir.join("profile.toml").exists());
    let out = reproduce(&dir, "max_stream=5");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(dir.join("table2.md").exists());
}

/// (pid, parent pid, state) of every process, from /proc.
fn processes() -> Vec<(i32, i32, char)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
            continue;
        };
        // `pid (comm) state ppid ...`; comm may hold spaces, so split after its last ')'
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let mut rest = stat[close + 1..].split_whitespace();
        let (Ok(pid), Some(state), Some(Ok(ppid))) = (
            stat[..open].trim().parse::<i32>(),
            rest.next().and_then(|s| s.chars().next()),
            rest.next().map(str::parse::<i32>),
        ) else {
            continue;
        };
        out.push((pid, ppid, state));
    }
    out
}

/// A signal to clopa-reproduce's pid alone (not its group, as `kill PID` sends) ends the step it
/// runs too, instead of leaving it writing while a rerun starts the same step: a training
/// episode caught just after its start never writes its checkpoint.
#[test]
fn killing_reproduce_alone_ends_its_running_step() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny_model(tmp.path());
    let (data, out) = (tmp.path().join("data"), tmp.path().join("run"));
    let mut child = reproduce_cmd(&model, &data, &out)
        .arg("-q")
        .spawn()
        .unwrap();
    let pid = i32::try_from(child.id()).unwrap();
    let t0 = std::time::Instant::now();
    // the first training step, and the checkpoint it is to write (its `-o`)
    let (step, output) = loop {
        assert!(child.try_wait().unwrap().is_none(), "finished too soon");
        assert!(t0.elapsed().as_secs() < 300, "no training step in 300 s");
        let found = processes().into_iter().find_map(|(p, pp, _)| {
            let args = std::fs::read(format!("/proc/{p}/cmdline")).ok()?;
            let args: Vec<String> = args
                .split(|b| *b == 0)
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect();
            let o = args.iter().position(|a| a == "-o")?;
            (pp == pid && args[0].ends_with("clopa-train-episode"))
                .then(|| (p, PathBuf::from(&args[o + 1])))
        });
        if let Some(f) = found {
            break f;
        }
        std::thread::sleep(std::time::Duration::from_millis(2));
    };
    // SAFETY: plain syscall with integer arguments, to our own child.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0);
    child.wait().unwrap();
    let t1 = std::time::Instant::now();
    while processes()
        .iter()
        .any(|&(p, _, state)| p == step && state != 'Z' && state != 'X')
    {
        assert!(t1.elapsed().as_secs() < 120, "step {step} still runs");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(
        !output.exists(),
        "the step outlived clopa-reproduce and wrote {}",
        output.display()
    );
}
