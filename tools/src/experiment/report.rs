//! An experiment's results: the table of runs (CSV and JSON), a summary per setting, and plots
//! of makespan, bytes over the cluster's wire and re-runs against the swept fault (SVG).

use std::path::{Path, PathBuf};

use anyhow::Context;
use plotters::prelude::*;
use serde::Serialize;

use super::run::RunRow;

/// A setting's runs in a few figures.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Summary {
    pub setting: String,
    pub x: f64,
    pub runs: usize,
    pub failed: usize,
    /// Over the runs that ended with a result (0 when none did).
    pub makespan_median_s: f64,
    pub makespan_min_s: f64,
    pub makespan_max_s: f64,
    pub moved_median_bytes: f64,
    pub wire_median_bytes: f64,
    pub reruns_median: f64,
    pub lost_nodes: u64,
}

pub fn summarize(rows: &[RunRow]) -> Vec<Summary> {
    let mut out: Vec<Summary> = Vec::new();
    for row in rows {
        if out.last().is_none_or(|s| s.setting != row.setting) {
            let runs: Vec<&RunRow> = rows.iter().filter(|r| r.setting == row.setting).collect();
            let ok: Vec<&&RunRow> = runs.iter().filter(|r| r.ok).collect();
            let figure = |f: &dyn Fn(&RunRow) -> f64| ok.iter().map(|r| f(r)).collect::<Vec<f64>>();
            let makespans = figure(&|r| r.makespan_s);
            out.push(Summary {
                setting: row.setting.clone(),
                x: row.x,
                runs: runs.len(),
                failed: runs.len() - ok.len(),
                makespan_median_s: median(&makespans),
                makespan_min_s: if makespans.is_empty() {
                    0.0
                } else {
                    makespans.iter().copied().fold(f64::INFINITY, f64::min)
                },
                makespan_max_s: makespans.iter().copied().fold(0.0, f64::max),
                moved_median_bytes: median(&figure(&|r| r.moved_bytes as f64)),
                wire_median_bytes: median(&figure(&|r| r.wire_bytes as f64)),
                reruns_median: median(&figure(&|r| r.reruns as f64)),
                lost_nodes: ok.iter().map(|r| r.lost_nodes).sum(),
            });
        }
    }
    out
}

fn median(values: &[f64]) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let mid = sorted.len() / 2;
    if sorted.len() % 2 == 0 { (sorted[mid - 1] + sorted[mid]) / 2.0 } else { sorted[mid] }
}

/// Whether every run that ended gave the same result handle (it must: faults change only how
/// long a job takes, never what it computes).
pub fn results_agree(rows: &[RunRow]) -> bool {
    let mut results = rows.iter().filter(|r| r.ok).map(|r| &r.result);
    let first = results.next();
    results.all(|r| Some(r) == first)
}

/// Writes `results.csv`, `results.json` and the plots into `out`; the files written.
pub fn write(out: &Path, title: &str, swept: Option<&str>, rows: &[RunRow]) -> anyhow::Result<Vec<PathBuf>> {
    let summary = summarize(rows);
    let csv_path = out.join("results.csv");
    let mut csv =
        csv::Writer::from_path(&csv_path).with_context(|| format!("cannot write {}", csv_path.display()))?;
    for row in rows {
        csv.serialize(row)?;
    }
    csv.flush()?;
    let json_path = out.join("results.json");
    let json = serde_json::json!({
        "experiment": title,
        "swept": swept,
        "results_agree": results_agree(rows),
        "settings": summary,
        "runs": rows,
    });
    std::fs::write(&json_path, serde_json::to_string_pretty(&json)?)
        .with_context(|| format!("cannot write {}", json_path.display()))?;
    let mut written = vec![csv_path, json_path];
    let x_name = swept.unwrap_or("setting");
    for (file, y_name, figure) in [
        ("makespan.svg", "makespan (s)", (|r: &RunRow| r.makespan_s) as fn(&RunRow) -> f64),
        ("wire.svg", "bytes over the cluster's wire", |r: &RunRow| r.wire_bytes as f64),
        ("reruns.svg", "tasks run again", |r: &RunRow| r.reruns as f64),
    ] {
        let path = out.join(file);
        plot(&path, title, x_name, y_name, rows, figure)
            .with_context(|| format!("cannot plot {}", path.display()))?;
        written.push(path);
    }
    Ok(written)
}

/// One figure against the swept fault: every run that ended as a point, the medians joined by
/// a line.
fn plot(
    path: &Path,
    title: &str,
    x_name: &str,
    y_name: &str,
    rows: &[RunRow],
    figure: fn(&RunRow) -> f64,
) -> anyhow::Result<()> {
    let ok: Vec<&RunRow> = rows.iter().filter(|r| r.ok).collect();
    let xs: Vec<f64> = rows.iter().map(|r| r.x).collect();
    let (x_min, x_max) =
        xs.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), x| (a.min(*x), b.max(*x)));
    let (x_min, x_max) = if x_min.is_finite() && x_max > x_min {
        let pad = (x_max - x_min) * 0.05;
        (x_min - pad, x_max + pad)
    } else {
        let x = if x_min.is_finite() { x_min } else { 0.0 };
        (x - 0.5, x + 0.5)
    };
    let y_max = ok.iter().map(|r| figure(r)).fold(0.0, f64::max);
    let y_max = if y_max > 0.0 { y_max * 1.1 } else { 1.0 };
    let root = SVGBackend::new(path, (720, 440)).into_drawing_area();
    root.fill(&WHITE).map_err(plot_error)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(44)
        .y_label_area_size(70)
        .build_cartesian_2d(x_min..x_max, 0.0..y_max)
        .map_err(plot_error)?;
    chart.configure_mesh().x_desc(x_name).y_desc(y_name).draw().map_err(plot_error)?;
    chart
        .draw_series(ok.iter().map(|r| Circle::new((r.x, figure(r)), 3, BLUE.mix(0.5).filled())))
        .map_err(plot_error)?
        .label("a run")
        .legend(|(x, y)| Circle::new((x, y), 3, BLUE.mix(0.5).filled()));
    let medians: Vec<(f64, f64)> = summarize(rows)
        .iter()
        .filter(|s| s.failed < s.runs)
        .map(|s| {
            let values: Vec<f64> = ok.iter().filter(|r| r.setting == s.setting).map(|r| figure(r)).collect();
            (s.x, median(&values))
        })
        .collect();
    chart
        .draw_series(LineSeries::new(medians, BLACK.stroke_width(2)))
        .map_err(plot_error)?
        .label("median")
        .legend(|(x, y)| PathElement::new(vec![(x - 8, y), (x + 8, y)], BLACK.stroke_width(2)));
    chart.configure_series_labels().background_style(WHITE).border_style(BLACK).draw().map_err(plot_error)?;
    root.present().map_err(plot_error)?;
    Ok(())
}

fn plot_error<E: std::fmt::Debug>(e: E) -> anyhow::Error {
    anyhow::anyhow!("{e:?}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(setting: &str, x: f64, makespan: f64, ok: bool) -> RunRow {
        RunRow {
            setting: setting.into(),
            x,
            ok,
            makespan_s: makespan,
            moved_bytes: 1000,
            result: "blob:aa".into(),
            error: if ok { String::new() } else { "timed out".into() },
            ..RunRow::default()
        }
    }

    #[test]
    fn summaries_take_medians_of_the_runs_that_ended() {
        let rows = [
            row("drop=0", 0.0, 1.0, true),
            row("drop=0", 0.0, 3.0, true),
            row("drop=0", 0.0, 2.0, true),
            row("drop=0.1", 0.1, 5.0, true),
            row("drop=0.1", 0.1, 0.0, false),
        ];
        let s = summarize(&rows);
        assert_eq!(s.len(), 2);
        assert_eq!((s[0].runs, s[0].failed, s[0].makespan_median_s), (3, 0, 2.0));
        assert_eq!((s[0].makespan_min_s, s[0].makespan_max_s), (1.0, 3.0));
        assert_eq!((s[1].runs, s[1].failed, s[1].makespan_median_s), (2, 1, 5.0));
        assert!(results_agree(&rows));
        let mut other = row("drop=0.1", 0.1, 4.0, true);
        other.result = "blob:bb".into();
        assert!(!results_agree(&[rows[0].clone(), other]));
    }

    #[test]
    fn the_table_and_plots_are_written_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let rows = [
            row("drop=0", 0.0, 1.0, true),
            row("drop=0.05", 0.05, 2.5, true),
            row("drop=0.05", 0.05, 0.0, false),
        ];
        let files = write(dir.path(), "loss", Some("drop"), &rows).unwrap();
        assert_eq!(files.len(), 5);
        let mut reader = csv::Reader::from_path(dir.path().join("results.csv")).unwrap();
        let back: Vec<RunRow> = reader.deserialize().map(|r| r.unwrap()).collect();
        assert_eq!(back, rows);
        let json: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.path().join("results.json")).unwrap()).unwrap();
        assert_eq!(json["settings"][1]["failed"], 1);
        assert_eq!(json["runs"].as_array().unwrap().len(), 3);
        let svg = std::fs::read_to_string(dir.path().join("makespan.svg")).unwrap();
        assert!(svg.starts_with("<svg") && svg.contains("makespan (s)") && svg.contains("drop"), "{svg}");
        // Two medians joined: a polyline through two points.
        assert!(svg.contains("<polyline"), "{svg}");
        // A setting whose every run failed still plots (no points, no median).
        write(dir.path(), "all failed", None, &[row("base", 0.0, 0.0, false)]).unwrap();
    }
}
