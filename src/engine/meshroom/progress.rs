//! Reads Meshroom's progress: the lines `meshroom_batch` prints and the per-node status files in
//! its cache. Both are untrusted text, so parsing never panics and ignores what it does not know.

use crate::jobs::Progress;
use std::path::Path;

/// A line of interest printed by `meshroom_batch`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Line {
    /// `Nodes to execute:  ['CameraInit_1', ...]`
    NodesToExecute(Vec<String>),
    /// `[3/11] FeatureMatching` or `[6/11](4/9) DepthMap`
    Node {
        /// 1-based node index.
        index: u32,
        /// Number of nodes.
        count: u32,
        /// Chunk `(c, C)` for chunked nodes.
        chunk: Option<(u32, u32)>,
        /// Node type.
        name: String,
    },
}

/// Parses one printed line.
pub fn parse_line(line: &str) -> Option<Line> {
    let line = line.trim();
    if let Some(rest) = line.strip_prefix("Nodes to execute:") {
        let names = rest
            .trim()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .split(',')
            .map(|s| s.trim().trim_matches(|c| c == '\'' || c == '"').to_string())
            .filter(|s| !s.is_empty())
            .collect();
        return Some(Line::NodesToExecute(names));
    }
    let (index, count, rest) = fraction(line.strip_prefix('[')?, ']')?;
    let (chunk, rest) = match rest.strip_prefix('(') {
        Some(r) => {
            let (c, total, rest) = fraction(r, ')')?;
            (Some((c, total)), rest)
        }
        None => (None, rest),
    };
    let name = rest.trim();
    let valid = |(i, n): (u32, u32)| i >= 1 && i <= n;
    if name.is_empty() || !name.chars().all(|c| c.is_alphanumeric() || c == '_') || !valid((index, count)) {
        return None;
    }
    if chunk.is_some_and(|c| !valid(c)) {
        return None;
    }
    Some(Line::Node {
        index,
        count,
        chunk,
        name: name.to_string(),
    })
}

/// `a/b` followed by `close`; returns a, b and the rest.
fn fraction(s: &str, close: char) -> Option<(u32, u32, &str)> {
    let (inner, rest) = s.split_once(close)?;
    let (a, b) = inner.split_once('/')?;
    Some((a.trim().parse().ok()?, b.trim().parse().ok()?, rest))
}

/// Folds the status files and the printed lines into a [`Progress`] over the whole graph.
///
/// The status files come first: they are written (atomically) as each chunk starts and ends,
/// while the frozen `meshroom_batch` of the official image block-buffers its printed lines into a
/// pipe, so they arrive late. Counting against the whole graph (the nodes in the saved project)
/// keeps a resumed run's percent right: the nodes a previous attempt finished count as done.
#[derive(Debug, Default)]
pub struct Tracker {
    nodes: Vec<String>,
    current: Option<Line>,
    /// Nodes in the saved project, once it is read.
    graph: Option<u32>,
    cache: CacheState,
}

impl Tracker {
    /// Takes a printed line; returns true when progress changed.
    pub fn line(&mut self, line: &str) -> bool {
        match parse_line(line) {
            Some(Line::NodesToExecute(nodes)) => self.nodes = nodes,
            Some(node) => self.current = Some(node),
            None => return false,
        }
        true
    }

    /// Takes the number of nodes in the graph (from the saved project) and what the cache says
    /// now; returns true when progress changed.
    pub fn cache(&mut self, graph: Option<u32>, cache: CacheState) -> bool {
        let before = self.progress();
        self.graph = graph.or(self.graph);
        self.cache = cache;
        self.progress() != before
    }

    /// Current progress; never 100 before the run has ended well.
    pub fn progress(&self) -> Progress {
        let line = match &self.current {
            Some(Line::Node {
                index,
                count,
                chunk,
                name,
            }) => Some((*index, *count, *chunk, name)),
            _ => None,
        };
        // The whole graph, or the nodes of this run when the project cannot be read.
        let Some(total) = self.graph.filter(|g| *g > 0).or(line.map(|l| l.1)) else {
            return Progress::default();
        };
        let done = self.cache.succeeded.min(total);
        let running = self.cache.running.as_ref();
        let from_status = done as f32 + running.map_or(0.0, |r| r.chunks_done as f32 / r.chunks.max(1) as f32);
        // A printed `[i/N]` counts from the nodes of this run; those before it were done already.
        let from_line = line.map_or(0.0, |(index, count, chunk, _)| {
            let within = chunk.map_or(0.0, |(c, k)| (c - 1) as f32 / k as f32);
            total.saturating_sub(count) as f32 + (index - 1) as f32 + within
        });
        let node = match (running, line) {
            (Some(r), _) => Some(r.node.clone()),
            (None, Some((index, _, _, name))) => Some(
                self.nodes
                    .get(index as usize - 1)
                    .cloned()
                    .unwrap_or_else(|| name.clone()),
            ),
            (None, None) => None,
        };
        let index = (from_status.max(from_line) as u32 + 1).min(total);
        // Chunks: the status files count them as they end; a printed `(c/C)` names the one started.
        let chunk = match (running, line) {
            (Some(r), _) if r.chunks > 1 => Some(((r.chunks_done + 1).min(r.chunks), r.chunks)),
            (None, Some((_, _, Some(c), _))) => Some(c),
            _ => None,
        };
        Progress {
            percent: (from_status.max(from_line) / total as f32 * 100.0).min(99.0),
            node,
            node_index: Some(index),
            node_count: Some(total),
            chunk_index: chunk.map(|c| c.0),
            chunk_count: chunk.map(|c| c.1),
            node_started_at: None,
        }
    }
}

/// Nodes in a saved Meshroom project (`{"graph": {name: node, ...}}`); `None` until it is readable.
pub fn graph_size(project: &Path) -> Option<u32> {
    let bytes = std::fs::read(project).ok()?;
    let v: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    Some(v.get("graph")?.as_object()?.len() as u32)
}

/// A node with a chunk running, from its status files.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunningNode {
    /// Its name, e.g. `DepthMap_1`.
    pub node: String,
    /// Chunks in SUCCESS.
    pub chunks_done: u32,
    /// Chunks with a status file (the tool writes SUBMITTED for every chunk first).
    pub chunks: u32,
}

/// What the status files in a Meshroom cache say.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct CacheState {
    /// Nodes whose every status file says SUCCESS.
    pub succeeded: u32,
    /// Names of nodes with a chunk in ERROR.
    pub failed: Vec<String>,
    /// Nodes with a status file that is not SUCCESS (running, submitted, stopped, error...).
    pub unfinished: u32,
    /// A node with a chunk RUNNING, if any.
    pub running: Option<RunningNode>,
}

/// Scans `<cache>/<NodeType>/<uid>/status` and `<i>.status` files.
pub fn scan_cache(cache: &Path) -> CacheState {
    let mut state = CacheState::default();
    let dirs = std::fs::read_dir(cache)
        .into_iter()
        .flatten()
        .flatten()
        .flat_map(|t| std::fs::read_dir(t.path()));
    for node_dir in dirs.flatten().flatten() {
        let mut statuses = Vec::new();
        for file in std::fs::read_dir(node_dir.path()).into_iter().flatten().flatten() {
            let name = file.file_name();
            let name = name.to_string_lossy();
            if name == "status" || name.ends_with(".status") {
                if let Some(s) = read_status(&file.path()) {
                    statuses.push(s);
                }
            }
        }
        if !statuses.is_empty() && statuses.iter().all(|(s, _)| s == "SUCCESS") {
            state.succeeded += 1;
        } else if !statuses.is_empty() {
            state.unfinished += 1;
        }
        if let Some((_, node)) = statuses.iter().find(|(s, _)| s == "ERROR") {
            state.failed.push(node.clone());
        }
        if let Some((_, node)) = statuses.iter().find(|(s, _)| s == "RUNNING") {
            state.running = Some(RunningNode {
                node: node.clone(),
                chunks_done: statuses.iter().filter(|(s, _)| s == "SUCCESS").count() as u32,
                chunks: statuses.len() as u32,
            });
        }
    }
    state.failed.sort();
    state
}

fn read_status(path: &Path) -> Option<(String, String)> {
    let bytes = std::fs::read(path).ok()?;
    let v: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    let status = v.get("status")?.as_str()?.to_string();
    let node = v.get("nodeName").and_then(|n| n.as_str()).unwrap_or("?").to_string();
    Some((status, node))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_documented_lines() {
        assert_eq!(
            parse_line("Nodes to execute:  ['CameraInit_1', 'FeatureExtraction_1']"),
            Some(Line::NodesToExecute(vec![
                "CameraInit_1".into(),
                "FeatureExtraction_1".into()
            ]))
        );
        assert_eq!(
            parse_line("[3/11] FeatureMatching"),
            Some(Line::Node {
                index: 3,
                count: 11,
                chunk: None,
                name: "FeatureMatching".into()
            })
        );
        assert_eq!(
            parse_line("[6/11](4/9) DepthMap"),
            Some(Line::Node {
                index: 6,
                count: 11,
                chunk: Some((4, 9)),
                name: "DepthMap".into()
            })
        );
        for junk in [
            "[0/11] X",
            "[12/11] X",
            "[3/0] X",
            "[a/b] X",
            "[3/11]",
            "[3/11](0/9) D",
            "[",
            "",
            "][",
        ] {
            assert_eq!(parse_line(junk), None, "{junk}");
        }
    }

    fn cache(succeeded: u32, running: Option<(&str, u32, u32)>) -> CacheState {
        CacheState {
            succeeded,
            running: running.map(|(node, chunks_done, chunks)| RunningNode {
                node: node.into(),
                chunks_done,
                chunks,
            }),
            ..CacheState::default()
        }
    }

    #[test]
    fn progress_counts_nodes_and_chunks_and_stays_below_100() {
        let mut t = Tracker::default();
        t.line("Nodes to execute:  ['A_1', 'B_1', 'DepthMap_1', 'D_1']");
        t.line("[3/4](3/5) DepthMap");
        let p = t.progress();
        assert_eq!(p.node.as_deref(), Some("DepthMap_1"));
        assert!((p.percent - 60.0).abs() < 0.01, "{}", p.percent);
        t.line("[4/4] D");
        t.cache(None, cache(4, None));
        assert_eq!(t.progress().percent, 99.0);
    }

    #[test]
    fn status_files_lead_when_lines_lag() {
        // Block-buffered output: no line yet, the status files say node 3 of 10 runs, chunk 2 of 4.
        let mut t = Tracker::default();
        assert!(t.cache(Some(10), cache(2, Some(("DepthMap_1", 1, 4)))));
        let p = t.progress();
        assert_eq!(
            (p.node.as_deref(), p.node_index, p.node_count),
            (Some("DepthMap_1"), Some(3), Some(10))
        );
        assert!((p.percent - 22.5).abs() < 0.01, "{}", p.percent);
        // A late line about an earlier node does not move progress back.
        t.line("[1/10] CameraInit");
        assert!((t.progress().percent - 22.5).abs() < 0.01);
    }

    #[test]
    fn a_resumed_run_counts_against_the_whole_graph() {
        // 10 nodes, 6 done by the previous attempt: this run executes 4 and has just started.
        let mut t = Tracker::default();
        t.line("Nodes to execute:  ['Meshing_1', 'MeshFiltering_1', 'Texturing_1', 'Publish_1']");
        t.line("[1/4] Meshing");
        t.cache(Some(10), cache(6, Some(("Meshing_1", 0, 1))));
        let p = t.progress();
        assert!((p.percent - 60.0).abs() < 0.01, "{}", p.percent);
        assert_eq!((p.node_index, p.node_count), (Some(7), Some(10)));
        assert_eq!(p.node.as_deref(), Some("Meshing_1"));
    }

    #[test]
    fn the_graph_size_comes_from_the_saved_project() {
        let dir = tempfile::tempdir().unwrap();
        let project = dir.path().join("project.mg");
        assert_eq!(graph_size(&project), None);
        std::fs::write(&project, r#"{"header": {}, "graph": {"A_1": {}, "B_1": {}}}"#).unwrap();
        assert_eq!(graph_size(&project), Some(2));
        std::fs::write(&project, "{half").unwrap();
        assert_eq!(graph_size(&project), None);
    }

    #[test]
    fn status_files_give_successes_and_failed_nodes() {
        let dir = tempfile::tempdir().unwrap();
        let write = |rel: &str, status: &str, node: &str| {
            let p = dir.path().join(rel);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, format!("{{\"status\": \"{status}\", \"nodeName\": \"{node}\"}}")).unwrap();
        };
        write("CameraInit/u1/status", "SUCCESS", "CameraInit_1");
        write("DepthMap/u2/0.status", "SUCCESS", "DepthMap_1");
        write("DepthMap/u2/1.status", "ERROR", "DepthMap_1");
        std::fs::write(dir.path().join("DepthMap/u2/2.status"), "{not json").unwrap();
        let s = scan_cache(dir.path());
        assert_eq!(
            s,
            CacheState {
                succeeded: 1,
                failed: vec!["DepthMap_1".into()],
                unfinished: 1,
                running: None,
            }
        );
        write("Meshing/u3/status", "RUNNING", "Meshing_1");
        assert_eq!(scan_cache(dir.path()).running.map(|r| r.node), Some("Meshing_1".into()));
    }

    proptest::proptest! {
        /// Any printed text: never a panic, and progress always within 0..=99.
        #[test]
        fn any_output_is_safe(lines in proptest::collection::vec(".*", 0..50), n in 0u32..20) {
            let mut t = Tracker::default();
            for l in &lines {
                t.line(l);
            }
            t.cache(Some(n), cache(n.wrapping_mul(3) % 25, Some(("X_1", n % 4, n % 3))));
            let p = t.progress();
            proptest::prop_assert!((0.0..=99.0).contains(&p.percent));
        }

        /// Node lines with any numbers, including absurd ones.
        #[test]
        fn any_numbers(i in proptest::num::u32::ANY, n in proptest::num::u32::ANY, c in proptest::num::u32::ANY, k in proptest::num::u32::ANY) {
            let mut t = Tracker::default();
            t.line(&format!("[{i}/{n}]({c}/{k}) DepthMap"));
            t.line(&format!("[{i}/{n}] Meshing"));
            let p = t.progress();
            proptest::prop_assert!((0.0..=99.0).contains(&p.percent));
        }

        /// Status files with any content.
        #[test]
        fn any_status_file(content in proptest::collection::vec(proptest::num::u8::ANY, 0..300), json in "\\{\"status\": \".{0,12}\"(, \"nodeName\": .{0,10})?\\}") {
            let dir = tempfile::tempdir().unwrap();
            let node = dir.path().join("Node/uid");
            std::fs::create_dir_all(&node).unwrap();
            std::fs::write(node.join("status"), &content).unwrap();
            std::fs::write(node.join("0.status"), json.as_bytes()).unwrap();
            let _ = scan_cache(dir.path());
        }
    }
}
