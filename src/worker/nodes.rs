//! Engine nodes as they end: a span each under the engine's span, from the node's start to its
//! end, and its duration in the node histogram (by node type and preset).

use crate::trace::{self, SpanKind};
use chrono::{DateTime, Utc};

/// Where a run's nodes go as they end.
#[derive(Clone)]
pub(super) struct NodeSpans {
    /// The engine span.
    pub cx: trace::Context,
    /// The job's preset, a label of the histogram.
    pub preset: String,
    /// The worker's metrics.
    pub metrics: crate::metrics::Metrics,
    /// True for engines whose nodes are timed as the progress reports them (COLMAP); Meshroom's
    /// status files give each node's real times once the run ends.
    pub as_reported: bool,
}

impl NodeSpans {
    /// A node seen ending in the progress reports; kept only for engines timed that way.
    pub fn reported(&self, name: &str, since: DateTime<Utc>, now: DateTime<Utc>, error: Option<&str>) {
        if self.as_reported {
            // COLMAP's steps are their own type.
            self.ended(name, name, since, now, error);
        }
    }

    /// A node of type `kind` that ran from `since` to `now`.
    pub fn ended(&self, name: &str, kind: &str, since: DateTime<Utc>, now: DateTime<Utc>, error: Option<&str>) {
        let secs = (now - since).num_milliseconds().max(0) as f64 / 1000.0;
        self.metrics
            .node_seconds
            .with_label_values(&[kind, self.preset.as_str()])
            .observe(secs);
        if trace::enabled() {
            let attrs = vec![
                trace::KeyValue::new("meshroom.node", name.to_string()),
                trace::KeyValue::new("meshroom.node_type", kind.to_string()),
            ];
            let cx = trace::start_at("node", SpanKind::Internal, &self.cx, attrs, Some(since.into()));
            trace::end(&cx, error, Some(now.into()));
        }
    }
}
