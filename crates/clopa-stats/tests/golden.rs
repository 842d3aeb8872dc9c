//! Golden tests against `tests/fixtures/stats.json`, produced by SciPy 1.15.3, statsmodels 0.14.4
//! and R 4.2.2 (copied from the shared metric fixtures with their README, `tests/fixtures/
//! README.md`). The README states no tolerances; ours: p-values to 1e-9 relative, statistics
//! exact.

use clopa_stats::{
    Alternative, McNemarKind, WilcoxonMethod, WilcoxonOptions, ZeroMethod, failure_table, mcnemar,
    wilcoxon,
};
use serde_json::Value;

const P_RTOL: f64 = 1e-9;

fn fixture() -> Value {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/stats.json"
    ))
    .expect("read stats.json");
    serde_json::from_str(&text).expect("parse stats.json")
}

/// A JSON number, or one of the strings "NaN", "Infinity", "-Infinity".
fn num(v: &Value) -> f64 {
    match v {
        Value::Number(n) => n.as_f64().expect("f64"),
        Value::String(s) if s == "NaN" => f64::NAN,
        Value::String(s) if s == "Infinity" => f64::INFINITY,
        Value::String(s) if s == "-Infinity" => f64::NEG_INFINITY,
        other => panic!("not a number: {other}"),
    }
}

fn vec_f64(v: &Value) -> Vec<f64> {
    v.as_array().expect("array").iter().map(num).collect()
}

fn close(got: f64, want: f64, rtol: f64) -> bool {
    if want.is_nan() {
        return got.is_nan();
    }
    if want.is_infinite() {
        return got == want;
    }
    if want == 0.0 {
        return got == 0.0;
    }
    ((got - want) / want).abs() <= rtol
}

#[test]
fn every_scipy_wilcoxon_configuration_matches() {
    let fx = fixture();
    let cases = fx["wilcoxon_cases"].as_array().expect("cases");
    assert_eq!(cases.len(), 12);
    let mut checked = 0;
    let mut failures = Vec::new();
    for case in cases {
        let desc = case["description"].as_str().unwrap_or("?");
        let x = vec_f64(&case["x"]);
        let y = vec_f64(&case["y"]);
        for e in case["scipy_wilcoxon"].as_array().expect("grid") {
            assert!(
                e.get("error").is_none(),
                "the fixture has an error entry we do not handle: {e}"
            );
            let opts = WilcoxonOptions {
                zero_method: e["zero_method"]
                    .as_str()
                    .expect("zm")
                    .parse()
                    .expect("zero_method"),
                correction: e["correction"].as_bool().expect("correction"),
                alternative: e["alternative"]
                    .as_str()
                    .expect("alt")
                    .parse()
                    .expect("alternative"),
                method: e["method"]
                    .as_str()
                    .expect("method")
                    .parse()
                    .expect("method"),
            };
            let r = wilcoxon(&x, &y, &opts).expect("wilcoxon");
            let want_stat = num(&e["statistic"]);
            let want_p = num(&e["pvalue"]);
            let mut ok = r.statistic == want_stat || (want_stat.is_nan() && r.statistic.is_nan());
            ok &= close(r.pvalue, want_p, P_RTOL);
            if let Some(z) = e.get("zstatistic") {
                ok &= r.zstatistic.is_some_and(|got| close(got, num(z), P_RTOL));
            }
            if !ok {
                failures.push(format!(
                    "{desc} | {} {} {} corr={}: got stat {} p {:e} z {:?} ({}), want stat {} p {:e} z {:?}",
                    opts.zero_method,
                    opts.alternative,
                    opts.method,
                    opts.correction,
                    r.statistic,
                    r.pvalue,
                    r.zstatistic,
                    r.method,
                    want_stat,
                    want_p,
                    e.get("zstatistic")
                ));
            }
            checked += 1;
        }
    }
    assert_eq!(checked, 648, "the fixture grid should have 648 entries");
    assert!(
        failures.is_empty(),
        "{} of {checked} mismatched:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn is_validate_defaults_match() {
    let fx = fixture();
    for case in fx["wilcoxon_cases"].as_array().expect("cases") {
        let r = wilcoxon(
            &vec_f64(&case["x"]),
            &vec_f64(&case["y"]),
            &WilcoxonOptions::default(),
        )
        .expect("w");
        let want = &case["is_validate_default_wilcoxon"];
        assert_eq!(
            r.statistic,
            num(&want["statistic"]),
            "{}",
            case["description"]
        );
        assert!(
            close(r.pvalue, num(&want["pvalue"]), P_RTOL),
            "{}: {} vs {}",
            case["description"],
            r.pvalue,
            want
        );
    }
}

/// R `wilcox.test(paired=TRUE, exact=FALSE, correct=TRUE|FALSE)` against our asymptotic test
/// with zeros dropped. The README's one documented difference is skipped: with every
/// difference zero, SciPy (and we) give NaN where R gives 1 for the corrected one-sided tests.
#[test]
fn r_wilcox_test_equals_our_asymptotic_test() {
    let fx = fixture();
    let mut checked = 0;
    for case in fx["wilcoxon_cases"].as_array().expect("cases") {
        let x = vec_f64(&case["x"]);
        let y = vec_f64(&case["y"]);
        let all_zero = case["n_zero_differences"] == case["n"];
        for e in case["r_wilcox_test"].as_array().expect("r") {
            if e["exact"] != "FALSE" {
                continue;
            }
            let alternative = match e["alternative"].as_str().expect("alt") {
                "two.sided" => Alternative::TwoSided,
                "greater" => Alternative::Greater,
                _ => Alternative::Less,
            };
            let correction = e["correct"].as_bool().expect("correct");
            let opts = WilcoxonOptions {
                zero_method: ZeroMethod::Wilcox,
                correction,
                alternative,
                method: WilcoxonMethod::Asymptotic,
            };
            let r = wilcoxon(&x, &y, &opts).expect("w");
            let want = num(&e["pvalue"]);
            if all_zero {
                assert!(r.pvalue.is_nan(), "all-zero differences give NaN");
                continue;
            }
            assert!(
                close(r.pvalue, want, P_RTOL),
                "{} {e}: got {}",
                case["description"],
                r.pvalue
            );
            // R's V is the sum of positive ranks: our statistic for one-sided tests.
            if alternative != Alternative::TwoSided {
                assert_eq!(r.statistic, num(&e["statistic_V"]));
            }
            checked += 1;
        }
    }
    assert!(checked >= 60, "checked {checked}");
}

#[test]
fn every_mcnemar_table_matches_statsmodels() {
    let fx = fixture();
    let tables = fx["mcnemar_tables"].as_array().expect("tables");
    assert_eq!(tables.len(), 7);
    for t in tables {
        let cells: Vec<Vec<u64>> = t["table"]
            .as_array()
            .expect("rows")
            .iter()
            .map(|r| {
                r.as_array()
                    .expect("row")
                    .iter()
                    .map(|v| v.as_u64().expect("count"))
                    .collect()
            })
            .collect();
        let table = [[cells[0][0], cells[0][1]], [cells[1][0], cells[1][1]]];
        for (key, kind) in [
            ("exact", McNemarKind::Exact),
            (
                "chi2_corrected",
                McNemarKind::ChiSquare { correction: true },
            ),
            (
                "chi2_uncorrected",
                McNemarKind::ChiSquare { correction: false },
            ),
        ] {
            let r = mcnemar(&table, kind);
            let want = &t[key];
            assert!(
                close(r.statistic, num(&want["statistic"]), 1e-12),
                "{table:?} {key}: stat {}",
                r.statistic
            );
            assert!(
                close(r.pvalue, num(&want["pvalue"]), P_RTOL),
                "{table:?} {key}: p {:e} vs {}",
                r.pvalue,
                want
            );
        }
    }
}

#[test]
fn nof_mcnemar_example_builds_the_same_table_and_p_value() {
    let fx = fixture();
    let ex = &fx["nof_mcnemar_example"];
    let bools = |v: &Value| -> Vec<bool> {
        v.as_array()
            .expect("a")
            .iter()
            .map(|b| b.as_bool().expect("b"))
            .collect()
    };
    let table = failure_table(&bools(&ex["fail_algo1"]), &bools(&ex["fail_algo2"])).expect("table");
    assert_eq!(table, [[18, 2], [10, 0]]);
    let r = mcnemar(&table, McNemarKind::Exact);
    assert_eq!(r.statistic, num(&ex["exact"]["statistic"]));
    assert!(close(r.pvalue, num(&ex["exact"]["pvalue"]), P_RTOL));
}

/// Small p-values: the exact binomial tail for a lopsided large table, against
/// scipy.stats.binom.cdf(3, 400, 0.5) * 2 (exact integers: 2 * (1 + 400 + 79800 + 10586800) / 2^400).
#[test]
fn mcnemar_exact_small_p_value_large_n() {
    let r = mcnemar(&[[0, 397], [3, 0]], McNemarKind::Exact);
    let want = 2.0 * 10667001.0 * 2f64.powi(-400);
    assert!(
        close(r.pvalue, want, P_RTOL),
        "{:e} vs {:e}",
        r.pvalue,
        want
    );
}
