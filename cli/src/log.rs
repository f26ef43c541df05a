//! What the libraries report along the way (a crashed layer cleaned up, a
//! registry that ignores Range, a dedup index that could not be kept), on
//! stderr as `strata: warning: …` lines. `STRATA_LOG` picks how much:
//! `off`, `error`, `warn` (the default), `info`, `debug` or `trace`, or
//! per crate as in `strata_chunkfetch=debug,warn`.

use std::str::FromStr;

use tracing::{Event, Level, Subscriber};
use tracing_subscriber::Layer as _;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, MakeWriter};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;

/// Installs the stderr log; a `STRATA_LOG` that does not parse is an error
/// naming it, not a silent default.
pub(crate) fn init() -> Result<(), String> {
    let spec = std::env::var("STRATA_LOG").unwrap_or_default();
    let filter = filter(&spec)?;
    let layer = tracing_subscriber::fmt::layer()
        .event_format(Line)
        .with_writer(AboveProgress);
    // Fails only if a logger is installed already, which nothing else does.
    let _ = tracing_subscriber::registry().with(layer.with_filter(filter)).try_init();
    Ok(())
}

fn filter(spec: &str) -> Result<Targets, String> {
    let spec = spec.trim();
    if spec.is_empty() {
        return Ok(Targets::new().with_default(Level::WARN));
    }
    Targets::from_str(spec).map_err(|e| format!("STRATA_LOG={spec:?}: {e} (try off, error, warn, info, debug or trace)"))
}

/// `strata: warning: MESSAGE field=value …`
struct Line;

impl<S, N> FormatEvent<S, N> for Line
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(&self, ctx: &FmtContext<'_, S, N>, mut writer: Writer<'_>, event: &Event<'_>) -> std::fmt::Result {
        let level = match *event.metadata().level() {
            Level::ERROR => "error",
            Level::WARN => "warning",
            Level::INFO => "info",
            Level::DEBUG => "debug",
            Level::TRACE => "trace",
        };
        // No newline: the line is printed whole, with one, by `PendingLine`.
        write!(writer, "strata: {level}: ")?;
        ctx.field_format().format_fields(writer.by_ref(), event)
    }
}

/// Each line goes out whole, above a progress bar if one is drawn.
struct AboveProgress;

struct PendingLine(Vec<u8>);

impl std::io::Write for PendingLine {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for PendingLine {
    fn drop(&mut self) {
        crate::progress::print_above(&String::from_utf8_lossy(&self.0));
    }
}

impl<'a> MakeWriter<'a> for AboveProgress {
    type Writer = PendingLine;

    fn make_writer(&'a self) -> Self::Writer {
        PendingLine(Vec::new())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_and_per_crate_filters_parse_and_nonsense_is_refused() {
        for ok in ["", "off", "warn", "debug", "strata_chunkfetch=debug,warn"] {
            assert!(filter(ok).is_ok(), "{ok}");
        }
        let err = filter("strata=loud").map(|_| ()).expect_err("a level that is not one");
        assert!(err.contains("STRATA_LOG=\"strata=loud\""), "{err}");
    }
}
