//! Time-left estimates, from how long each engine node took in earlier succeeded jobs of the
//! same preset with a similar number of images. Workers record a job's node timings as its nodes
//! end (`Timer`); the console asks `GET /jobs/{id}/estimate`.

use super::db::on;
use super::{Job, Progress, Stage, Status, Store, StoreError};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use utoipa::ToSchema;

/// How long one engine node took.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct NodeTiming {
    /// Node name, as in `progress.node`.
    pub name: String,
    /// Seconds from its start to the start of the next one (or the end of the run).
    pub secs: f64,
}

/// The answer of `GET /jobs/{id}/estimate`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Estimate {
    /// Seconds left until the engine is done; null ("unknown") when no earlier job is comparable.
    pub remaining_secs: Option<f64>,
    /// How many earlier jobs the estimate is drawn from.
    pub based_on: usize,
}

/// Earlier jobs compared: the most recent this many.
const HISTORY: i64 = 20;

/// Follows a running job's progress reports and records each node's duration as the next one starts.
#[derive(Debug, Default)]
pub struct Timer {
    current: Option<(String, DateTime<Utc>)>,
    done: Vec<NodeTiming>,
}

impl Timer {
    /// Takes a progress report; stamps it with the current node's start and returns the timings
    /// so far when a node ended with it.
    pub fn observe(&mut self, progress: &mut Progress, now: DateTime<Utc>) -> Option<Vec<NodeTiming>> {
        let node = progress.node.clone()?;
        let mut ended = None;
        match &self.current {
            Some((name, since)) if *name == node => progress.node_started_at = Some(*since),
            previous => {
                if let Some((name, since)) = previous {
                    self.done.push(timing(name, *since, now));
                    ended = Some(self.done.clone());
                }
                self.current = Some((node, now));
                progress.node_started_at = Some(now);
            }
        }
        ended
    }

    /// The node running now, and since when.
    pub fn current(&self) -> Option<(&str, DateTime<Utc>)> {
        self.current.as_ref().map(|(name, since)| (name.as_str(), *since))
    }

    /// Every node's timing once the run has ended well (the last node ends now).
    pub fn finish(mut self, now: DateTime<Utc>) -> Vec<NodeTiming> {
        if let Some((name, since)) = self.current.take() {
            self.done.push(timing(&name, since, now));
        }
        self.done
    }
}

fn timing(name: &str, since: DateTime<Utc>, now: DateTime<Utc>) -> NodeTiming {
    NodeTiming {
        name: name.to_string(),
        secs: (now - since).num_milliseconds().max(0) as f64 / 1000.0,
    }
}

/// Seconds left for `job`, from earlier runs given as (image count, node timings), most recent
/// first; `None` when there are none. Each earlier run is scaled to this job's image count.
pub fn remaining(job: &Job, history: &[(usize, Vec<NodeTiming>)], now: DateTime<Utc>) -> Option<f64> {
    if job.status.is_final() {
        return Some(0.0);
    }
    let (_, order) = history.iter().find(|(_, t)| !t.is_empty())?;
    let images = job.image_count().max(1) as f64;
    let mut samples: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    for (n, timings) in history {
        let scale = images / (*n).max(1) as f64;
        for t in timings {
            samples.entry(&t.name).or_default().push(t.secs * scale);
        }
    }
    let median = |name: &str| samples.get(name).map_or(0.0, |v| median(v));
    let total = |nodes: &[NodeTiming]| nodes.iter().map(|t| median(&t.name)).sum::<f64>();
    if job.status == Status::Enqueued || job.stage == Some(Stage::Downloading) {
        return Some(total(order));
    }
    if job.stage == Some(Stage::Uploading) {
        return Some(0.0);
    }
    let p = &job.progress;
    let Some(node) = &p.node else {
        return Some(total(order));
    };
    // Where the running node is in the earlier run's order; by index when its name is new.
    let at = order
        .iter()
        .position(|t| &t.name == node)
        .or_else(|| p.node_index.map(|i| (i as usize).saturating_sub(1)))?;
    let in_node = p
        .node_started_at
        .map_or(0.0, |s| (now - s).num_milliseconds().max(0) as f64 / 1000.0);
    let this = (median(node) - in_node).max(0.0);
    Some(this + total(order.get(at + 1..).unwrap_or(&[])))
}

fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

impl Store {
    /// The estimate for a job: earlier succeeded jobs of its preset with half to twice its images.
    pub async fn estimate(&self, job: &Job) -> Result<Estimate, StoreError> {
        let sql = "SELECT doc FROM jobs WHERE pipeline = $1 AND status = 'succeeded' \
                   AND images BETWEEN $2 AND $3 AND id <> $4 ORDER BY id DESC LIMIT $5";
        let n = job.image_count() as i64;
        let docs: Vec<String> = on!(self.db(), pool => sqlx::query_scalar(sql)
            .bind(&job.pipeline)
            .bind((n + 1) / 2)
            .bind(n * 2)
            .bind(job.id.as_bytes().to_vec())
            .bind(HISTORY)
            .fetch_all(pool)
            .await?);
        let history: Vec<(usize, Vec<NodeTiming>)> = docs
            .iter()
            .filter_map(|d| serde_json::from_str::<Job>(d).ok())
            .filter(|j| !j.node_timings.is_empty())
            .map(|j| (j.image_count(), j.node_timings))
            .collect();
        Ok(Estimate {
            remaining_secs: remaining(job, &history, Utc::now()),
            based_on: history.len(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Duration;

    fn t(name: &str, secs: f64) -> NodeTiming {
        NodeTiming {
            name: name.into(),
            secs,
        }
    }

    #[test]
    fn unknown_without_history_and_scaled_by_images() {
        let mut job = Job::new("p".into(), 60);
        job.image_urls = vec!["u".into(); 20];
        assert_eq!(remaining(&job, &[], Utc::now()), None);
        // Two earlier runs of 10 images: medians 10 and 30 s, doubled for 20 images.
        let history = vec![
            (10, vec![t("A", 10.0), t("B", 30.0)]),
            (10, vec![t("A", 10.0), t("B", 30.0)]),
        ];
        assert_eq!(remaining(&job, &history, Utc::now()), Some(80.0));
    }

    #[test]
    fn counts_what_is_left_of_the_running_node() {
        let now = Utc::now();
        let mut job = Job::new("p".into(), 60);
        job.image_urls = vec!["u".into(); 10];
        job.status = Status::Processing;
        job.stage = Some(Stage::Reconstructing);
        job.progress.node = Some("B".into());
        job.progress.node_started_at = Some(now - Duration::seconds(10));
        let history = vec![
            (10, vec![t("A", 5.0), t("B", 30.0), t("C", 7.0)]),
            (10, vec![t("A", 5.0), t("B", 50.0), t("C", 9.0)]),
            (10, vec![t("A", 5.0), t("B", 40.0), t("C", 8.0)]),
        ];
        // B: median 40, 10 s in: 30 left; then C: median 8.
        assert_eq!(remaining(&job, &history, now), Some(38.0));
        // Over its median: only the nodes after it are left.
        job.progress.node_started_at = Some(now - Duration::seconds(100));
        assert_eq!(remaining(&job, &history, now), Some(8.0));
        job.finish(Status::Succeeded, None);
        assert_eq!(remaining(&job, &history, now), Some(0.0));
    }

    #[test]
    fn timer_records_each_node_when_the_next_starts() {
        let start = Utc::now();
        let mut timer = Timer::default();
        let mut p = Progress {
            node: Some("A".into()),
            ..Progress::default()
        };
        assert_eq!(timer.observe(&mut p, start), None);
        assert_eq!(p.node_started_at, Some(start));
        let later = start + Duration::seconds(3);
        assert_eq!(timer.observe(&mut p.clone(), later), None, "same node");
        p.node = Some("B".into());
        let ended = timer.observe(&mut p, later).unwrap();
        assert_eq!(ended, vec![t("A", 3.0)]);
        assert_eq!(p.node_started_at, Some(later));
        let all = timer.finish(later + Duration::seconds(2));
        assert_eq!(all, vec![t("A", 3.0), t("B", 2.0)]);
    }
}
