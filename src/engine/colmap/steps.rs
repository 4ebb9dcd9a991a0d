//! The steps of a COLMAP job, in order, and the command line of each, from the job's folders.

use super::Run;
use crate::jobs::Progress;
use std::path::{Path, PathBuf};

/// A step, as reported in `progress.node`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Step {
    /// `feature_extractor`.
    FeatureExtraction,
    /// `exhaustive_matcher`.
    FeatureMatching,
    /// `mapper`.
    Mapping,
    /// `model_converter`, to PLY and TXT.
    Export,
    /// Open3D's Poisson mesh of the sparse points.
    Meshing,
}

impl Step {
    const COUNT: usize = 5;

    fn name(self) -> &'static str {
        match self {
            Step::FeatureExtraction => "FeatureExtraction",
            Step::FeatureMatching => "FeatureMatching",
            Step::Mapping => "Mapping",
            Step::Export => "Export",
            Step::Meshing => "Meshing",
        }
    }

    /// Progress `within` (0 to 1) this step: the job's share done, capped below 100 until the end.
    pub(super) fn progress(self, within: f32) -> Progress {
        let (index, count) = (self as usize, Self::COUNT as f32);
        Progress {
            percent: ((index as f32 + within.clamp(0.0, 1.0)) / count * 100.0).min(99.0),
            node: Some(self.name().to_string()),
            node_index: Some(index as u32 + 1),
            node_count: Some(Self::COUNT as u32),
            ..Progress::default()
        }
    }
}

/// The job's COLMAP files: its feature database, its images, the models, the published output.
pub(super) struct Folders {
    pub db: PathBuf,
    pub images: PathBuf,
    pub sparse: PathBuf,
    pub out: PathBuf,
}

fn path(p: &Path) -> String {
    p.display().to_string()
}

fn command(words: &[&str]) -> Vec<String> {
    words.iter().map(|w| w.to_string()).collect()
}

impl Folders {
    /// The folders of a run; a retry starts over (COLMAP keeps no state worth resuming).
    pub async fn prepare(run: &Run<'_>) -> std::io::Result<Folders> {
        let f = Folders {
            db: run.dir.join("colmap.db"),
            images: run.dir.join("images"),
            sparse: run.dir.join("sparse"),
            out: run.output_dir(),
        };
        let _ = tokio::fs::remove_file(&f.db).await;
        let _ = tokio::fs::remove_dir_all(&f.sparse).await;
        tokio::fs::create_dir_all(&f.sparse).await?;
        tokio::fs::create_dir_all(f.out.join("sparse")).await?;
        Ok(f)
    }

    /// SIFT features of every image, on CPU.
    pub fn extract(&self) -> Vec<String> {
        let mut args = command(&["feature_extractor", "--database_path"]);
        args.extend([path(&self.db), "--image_path".into(), path(&self.images)]);
        args.extend(command(&["--SiftExtraction.use_gpu", "0"]));
        args
    }

    /// Every pair of images matched, on CPU.
    pub fn match_all(&self) -> Vec<String> {
        let mut args = command(&["exhaustive_matcher", "--database_path"]);
        args.extend([path(&self.db)]);
        args.extend(command(&["--SiftMatching.use_gpu", "0"]));
        args
    }

    /// Incremental mapping into `sparse/<n>`, one folder per model found.
    pub fn map(&self) -> Vec<String> {
        let mut args = command(&["mapper", "--database_path"]);
        args.extend([path(&self.db), "--image_path".into(), path(&self.images)]);
        args.extend(["--output_path".into(), path(&self.sparse)]);
        args
    }

    /// `model` exported as a PLY point cloud (`ply`) and as COLMAP's text files (`out/sparse`).
    pub fn export(&self, model: &Path, ply: &Path) -> [Vec<String>; 2] {
        [(path(ply), "PLY"), (path(&self.out.join("sparse")), "TXT")].map(|(target, kind)| {
            let mut args = command(&["model_converter", "--input_path"]);
            args.extend([path(model), "--output_path".into(), target]);
            args.extend(["--output_type".into(), kind.into()]);
            args
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_runs_through_the_steps() {
        let first = Step::FeatureExtraction.progress(0.5);
        assert_eq!(
            (first.percent, first.node_index, first.node_count),
            (10.0, Some(1), Some(5))
        );
        assert_eq!(first.node.as_deref(), Some("FeatureExtraction"));
        assert_eq!(
            Step::Meshing.progress(1.0).percent,
            99.0,
            "100 only once the job has ended"
        );
    }

    #[test]
    fn command_lines_name_the_job_folders() {
        let f = Folders {
            db: "/j/colmap.db".into(),
            images: "/j/images".into(),
            sparse: "/j/sparse".into(),
            out: "/j/output".into(),
        };
        assert_eq!(
            f.extract().join(" "),
            "feature_extractor --database_path /j/colmap.db --image_path /j/images --SiftExtraction.use_gpu 0"
        );
        assert_eq!(
            f.map().join(" "),
            "mapper --database_path /j/colmap.db --image_path /j/images --output_path /j/sparse"
        );
        let [ply, txt] = f.export(Path::new("/j/sparse/0"), Path::new("/j/output/sparse.ply"));
        assert_eq!(
            ply.join(" "),
            "model_converter --input_path /j/sparse/0 --output_path /j/output/sparse.ply --output_type PLY"
        );
        assert!(txt
            .join(" ")
            .ends_with("--output_path /j/output/sparse --output_type TXT"));
    }
}
