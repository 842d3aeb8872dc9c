//! Writes a sample `split.parquet` and `steps.parquet` into a folder, to check that other readers
//! (polars, pyarrow, duckdb) read them: `cargo run -p clopa-table --example sample_tables -- DIR`.

use std::path::PathBuf;

use clopa_schedule::{SplitSettings, split};
use clopa_table::{Provenance, StepRow, write_split, write_steps};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = PathBuf::from(std::env::args().nth(1).ok_or("usage: sample_tables DIR")?);
    let ids: Vec<String> = (0..21).map(|i| format!("case_{i:03}")).collect();
    let rows = split("sample", &ids, &SplitSettings::default())?;
    let prov = Provenance::new(
        "sample_tables",
        "0.1.0",
        serde_json::json!({"k_d": 0.25}),
        0,
    );
    write_split(&dir.join("split.parquet"), &rows, &prov)?;
    let steps: Vec<StepRow> = (0..3)
        .map(|step| StepRow {
            task: "sample".into(),
            method: "base".into(),
            run: None,
            episode: 0,
            n_seen: 0,
            infer_run: 0,
            case_id: "case_000".into(),
            step,
            dice: 0.5 + 0.1 * step as f64,
            nsd: 0.6,
            fg_clicks: 1,
            bg_clicks: 1,
            seconds: 0.01,
        })
        .collect();
    write_steps(&dir.join("steps.parquet"), &steps, &prov)?;
    Ok(())
}
