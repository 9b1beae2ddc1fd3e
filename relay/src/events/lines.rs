//! The log line of each event: a `tracing` layer that writes the events of
//! the `mailrelay::event` target as they are — one JSON object per line,
//! `{"level":"INFO","target":"mailrelay::event","event":{…}}` — while the
//! ordinary formatter is kept off that target. Through the formatter the
//! record would be escaped character by character (tracing-subscriber
//! guards messages against control characters): callgrind counted about
//! 30,000 instructions per event that way, most of the cost of events.

use std::io::Write;

use tracing::field::{Field, Visit};
use tracing_subscriber::Layer;
use tracing_subscriber::layer::Context;

/// The target of event records.
pub const TARGET: &str = "mailrelay::event";
/// The field that carries the record (already JSON).
pub(crate) const FIELD: &str = "event";

/// Writes event records to stderr, one line each.
#[derive(Default)]
pub struct EventLines;

impl EventLines {
    /// The ordinary formatter's filter: everything but event records.
    pub fn others(metadata: &tracing::Metadata<'_>) -> bool {
        metadata.target() != TARGET
    }
}

struct Record(Option<String>);

impl Visit for Record {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == FIELD {
            self.0 = Some(line(value));
        }
    }

    fn record_debug(&mut self, _: &Field, _: &dyn std::fmt::Debug) {}
}

/// The line for a record. The record is JSON made as serde_json makes
/// it (see `json`): no newline or control character can be in it
/// unescaped.
fn line(json: &str) -> String {
    let mut out = String::with_capacity(json.len() + 64);
    out.push_str(r#"{"level":"INFO","target":"mailrelay::event","event":"#);
    out.push_str(json);
    out.push_str("}\n");
    out
}

impl<S: tracing::Subscriber> Layer<S> for EventLines {
    fn on_event(&self, event: &tracing::Event<'_>, _: Context<'_, S>) {
        if event.metadata().target() != TARGET {
            return;
        }
        let mut record = Record(None);
        event.record(&mut record);
        if let Some(line) = record.0 {
            // One write of the whole line: lines of other threads never
            // land inside it.
            let _ = std::io::stderr().lock().write_all(line.as_bytes());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::line;

    #[test]
    fn an_event_line_is_one_json_object_holding_the_record() {
        let l = line(r#"{"version":1,"type":"Delivery"}"#);
        assert!(l.ends_with('\n') && l.matches('\n').count() == 1);
        let v: serde_json::Value = serde_json::from_str(&l).unwrap();
        assert_eq!(v["target"], "mailrelay::event");
        assert_eq!(v["event"]["type"], "Delivery");
    }
}
