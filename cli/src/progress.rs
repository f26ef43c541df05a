//! Progress bars on stderr, one per layer while it moves. indicatif hides
//! them when stderr is not a terminal; the per-layer lines stay.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};
use strata::{LayerReport, PullEvent, TransferEvent};

fn short(digest: &str) -> &str {
    let hex = digest.trim_start_matches("sha256:");
    hex.get(..12).unwrap_or(hex)
}

/// The bar drawn last, for log lines to go above (a finished one draws
/// nothing, so it needs no clearing).
static SHOWN: Mutex<Option<ProgressBar>> = Mutex::new(None);

/// Prints `line` on stderr without tearing a progress bar being drawn.
pub(crate) fn print_above(line: &str) {
    let shown = SHOWN.lock().unwrap_or_else(|e| e.into_inner()).clone();
    match shown {
        Some(bar) => bar.suspend(|| eprintln!("{line}")),
        None => eprintln!("{line}"),
    }
}

fn bar(length: Option<u64>, prefix: String) -> ProgressBar {
    let bar = match length {
        Some(n) => ProgressBar::new(n).with_style(
            ProgressStyle::with_template("{prefix} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
        ),
        None => ProgressBar::new_spinner().with_style(
            ProgressStyle::with_template("{prefix} {spinner} {bytes} {bytes_per_sec}")
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        ),
    };
    bar.set_prefix(prefix);
    bar.enable_steady_tick(Duration::from_millis(200));
    *SHOWN.lock().unwrap_or_else(|e| e.into_inner()) = Some(bar.clone());
    bar
}

/// The pull callback: a bar per layer being fetched, then its line
/// (`line` formats it; `None` prints nothing, for `--json`).
pub(crate) fn pull(line: Option<fn(&LayerReport) -> String>) -> strata::Progress {
    let current: Mutex<Option<ProgressBar>> = Mutex::new(None);
    Arc::new(move |event: PullEvent<'_>| {
        let mut current = current.lock().unwrap_or_else(|e| e.into_inner());
        match event {
            PullEvent::Fetching { digest, expected, partial } => {
                if line.is_some() {
                    let how = if partial { "partial" } else { "whole" };
                    *current = Some(bar(Some(expected), format!("{} {how:>7}", short(digest))));
                }
            }
            PullEvent::Fetched { bytes, .. } => {
                if let Some(bar) = current.as_ref() {
                    // Merged ranges may fetch a little more than planned.
                    if bar.length().is_some_and(|n| bytes > n) {
                        bar.set_length(bytes);
                    }
                    bar.set_position(bytes);
                }
            }
            PullEvent::FilesDone { done, files, .. } => {
                if let Some(bar) = current.as_ref()
                    && (done == files || done.is_multiple_of(64))
                {
                    bar.set_message(format!("{done}/{files} files"));
                }
            }
            PullEvent::Layer(report) => {
                if let Some(bar) = current.take() {
                    bar.finish_and_clear();
                }
                if let Some(line) = line {
                    eprintln!("{}", line(report));
                }
            }
        }
    })
}

/// The export and push callback: a bar per layer blob being written (a
/// byte count when its size is not known ahead), then its line, unless
/// `lines` is false (for `--json`).
pub(crate) fn transfer(lines: bool) -> strata::TransferProgress {
    let current: Mutex<Option<ProgressBar>> = Mutex::new(None);
    Arc::new(move |event: TransferEvent<'_>| {
        let mut current = current.lock().unwrap_or_else(|e| e.into_inner());
        match event {
            TransferEvent::Writing { layer_id, size } => {
                if lines {
                    *current = Some(bar(size, short(layer_id).to_owned()));
                }
            }
            TransferEvent::Written { bytes, .. } => {
                if let Some(bar) = current.as_ref() {
                    bar.set_position(bytes);
                }
            }
            TransferEvent::Layer(layer) => {
                if let Some(bar) = current.take() {
                    bar.finish_and_clear();
                }
                if lines {
                    eprintln!("{} -> {} ({} bytes)", layer.diff_id, layer.digest, layer.size);
                }
            }
        }
    })
}
