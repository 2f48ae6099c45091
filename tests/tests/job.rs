//! The default job (`cargo run --release`): its results are checked against the same
//! computation done independently on the host, so the handles prove the node computed right.

use std::collections::BTreeMap;
use std::process::{Command, Stdio};

use cairn_object::Handle;

/// The wordcount of userlib/tasks/src/bin/wordcount.rs, done here from the same text.
fn expected_wordcount() -> Handle {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let text: Vec<u8> = ["README.md", "docs/ARCHITECTURE.md", "docs/OBJECTS.md", "docs/EVALUATION.md"]
        .iter()
        .flat_map(|p| std::fs::read(format!("{root}/{p}")).unwrap())
        .collect();
    let mut counts: BTreeMap<Vec<u8>, u64> = BTreeMap::new();
    for word in text.split(|b| !b.is_ascii_alphabetic()).filter(|w| !w.is_empty()) {
        *counts.entry(word.to_ascii_lowercase()).or_default() += 1;
    }
    let rendered: String =
        counts.iter().map(|(w, n)| format!("{} {n}\n", String::from_utf8_lossy(w))).collect();
    Handle::blob(rendered.as_bytes())
}

/// The Mandelbrot image of userlib/tasks/src/bin/mandelbrot.rs, computed here in hardware
/// floating point; the task uses software floating point. IEEE 754 makes them agree.
fn expected_image() -> Vec<u8> {
    let (width, height, max_iter) = (256u32, 192u32, 64u32);
    let mut out = format!("P6\n{width} {height}\n255\n").into_bytes();
    for py in 0..height {
        let ci = -1.25 + 2.5 * (py as f64 + 0.5) / height as f64;
        for px in 0..width {
            let cr = -2.5 + 3.5 * (px as f64 + 0.5) / width as f64;
            let (mut zr, mut zi, mut n) = (0.0f64, 0.0f64, 0);
            while n < max_iter && zr * zr + zi * zi <= 4.0 {
                let t = zr * zr - zi * zi + cr;
                zi = 2.0 * zr * zi + ci;
                zr = t;
                n += 1;
            }
            let g = if n == max_iter { 0 } else { 255 - (n * 255 / max_iter) as u8 };
            out.extend_from_slice(&if g == 0 { [0, 0, 0] } else { [g / 3, g / 2 + 40, 255 - g / 2] });
        }
    }
    out
}

#[test]
fn default_job_computes_the_right_results_memoizes_and_replays() {
    let dir = tempfile::tempdir().unwrap();
    let trace = dir.path().join("trace.json");
    let output = Command::new(env!("CARGO_BIN_FILE_CAIRN_TOOLS_cairn"))
        .arg("--out-dir")
        .arg(dir.path())
        .arg("--trace")
        .arg(&trace)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{stdout}\n{stderr}");
    let line = |prefix: &str| -> Vec<&str> { stdout.lines().filter(|l| l.starts_with(prefix)).collect() };

    let counts = line("job: wordcount -> ");
    assert_eq!(counts.len(), 2, "{stdout}");
    let want = expected_wordcount().to_string();
    assert!(
        counts.iter().all(|l| l.starts_with(&format!("job: wordcount -> {want} "))),
        "{counts:?}, want {want}"
    );

    let image = expected_image();
    let image_handle = Handle::blob(&image).to_string();
    let expected = format!("job: mandelbrot -> {image_handle}");
    assert_eq!(line("job: mandelbrot -> "), [expected.as_str(), expected.as_str()]);

    assert_eq!(line("job: first evaluation: "), ["job: first evaluation: tasks_run=22 memo_hits=0"]);
    assert_eq!(line("job: second evaluation: "), ["job: second evaluation: tasks_run=0 memo_hits=2"]);
    assert_eq!(line("replay: "), ["replay: identical"]);

    let saved = std::fs::read(dir.path().join("mandelbrot.ppm")).expect("the image was saved");
    assert!(saved == image, "the saved image differs from the host's rendering");
    assert!(
        stderr.contains(&format!("cairn: saved mandelbrot.ppm (147471 bytes, {image_handle})")),
        "{stderr}"
    );

    // The job's trace (docs/TRACES.md): in the format's rules, an evaluation span for each of
    // the two roots, evaluated twice; the first evaluation's tasks (and the replay's) on the
    // CPUs' tracks; and the spans' own file not saved beside the image.
    let trace: serde_json::Value = serde_json::from_slice(&std::fs::read(&trace).unwrap()).unwrap();
    cairn_tools::trace::validate(&trace).unwrap();
    let events = trace["traceEvents"].as_array().unwrap();
    let named = |name: &str| events.iter().filter(|e| e["name"] == name).count();
    assert_eq!(named("eval"), 4, "{trace}");
    assert!(named("task") >= 22, "the first evaluation's 22 tasks at least: {trace}");
    let tracks: Vec<&str> = events
        .iter()
        .filter(|e| e["name"] == "thread_name")
        .map(|e| e["args"]["name"].as_str().unwrap())
        .collect();
    assert!(
        tracks.contains(&"cpu 0") && tracks.contains(&"cpu 1") && tracks.contains(&"evaluations"),
        "{tracks:?}"
    );
    assert!(!dir.path().join("trace.spans").exists());
}
