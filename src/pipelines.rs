//! Pipeline presets (`pipelines/*.toml`): which engine pipeline a job runs, its fixed overrides,
//! whether it needs a GPU, and which per-job parameters are allowed.

use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Presets compiled into the binary, so `all-in-one` works from any folder.
const BUILT_IN: [(&str, &str); 4] = [
    ("colmap-sparse", include_str!("../pipelines/colmap-sparse.toml")),
    ("default", include_str!("../pipelines/default.toml")),
    ("draft", include_str!("../pipelines/draft.toml")),
    ("high", include_str!("../pipelines/high.toml")),
];

/// The engine that runs a preset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Engine {
    /// `meshroom_batch`.
    Meshroom,
    /// COLMAP, on CPU.
    Colmap,
}

/// One preset.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Preset {
    /// File stem, e.g. `draft`.
    #[serde(skip)]
    pub name: String,
    /// One line for listings.
    pub description: String,
    /// Which engine runs it.
    pub engine: Engine,
    /// Template name, or a `.mg` path (resolved against the presets folder).
    pub pipeline: String,
    /// True when the pipeline needs a CUDA GPU.
    pub gpu: bool,
    /// `NodeType:param=value` overrides always applied.
    #[serde(default)]
    pub overrides: Vec<String>,
    /// Parameters a job may set, with what each accepts.
    #[serde(default)]
    pub params: BTreeMap<String, Param>,
}

/// What a parameter accepts: the type and the bounds or choices of the engine's own option.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Param {
    /// A whole number within `min..=max`.
    Int {
        /// Smallest value.
        min: i64,
        /// Largest value.
        max: i64,
    },
    /// A finite number within `min..=max`.
    Float {
        /// Smallest value.
        min: f64,
        /// Largest value.
        max: f64,
    },
    /// `true` or `false`.
    Bool,
    /// One of these values, exactly as written.
    Choice {
        /// The values (strings or numbers).
        values: Vec<toml::Value>,
    },
}

impl Param {
    /// The values of a choice, as a job writes them (empty for other kinds).
    pub fn choices(&self) -> Vec<String> {
        match self {
            Param::Choice { values } => values.iter().map(choice_text).collect(),
            _ => Vec::new(),
        }
    }

    /// Ok when `value` is acceptable; else what is.
    pub fn check(&self, value: &str) -> Result<(), String> {
        match self {
            Param::Int { min, max } => match value.parse::<i64>() {
                Ok(v) if (*min..=*max).contains(&v) => Ok(()),
                _ => Err(format!("a whole number from {min} to {max}")),
            },
            Param::Float { min, max } => match value.parse::<f64>() {
                Ok(v) if v.is_finite() && (*min..=*max).contains(&v) => Ok(()),
                _ => Err(format!("a number from {min} to {max}")),
            },
            Param::Bool => match value {
                "true" | "false" => Ok(()),
                _ => Err("true or false".into()),
            },
            Param::Choice { .. } => {
                let names = self.choices();
                match names.iter().any(|n| n == value) {
                    true => Ok(()),
                    false => Err(format!("one of {}", names.join(", "))),
                }
            }
        }
    }
}

/// A choice as a job gives it: strings without quotes, numbers as written.
fn choice_text(v: &toml::Value) -> String {
    match v {
        toml::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Preset loading and per-job parameter failures.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    /// A preset file could not be read or parsed.
    #[error("pipeline preset {file}: {reason}")]
    Invalid {
        /// The file.
        file: String,
        /// What is wrong.
        reason: String,
    },
    /// A job parameter outside the preset's allow-list.
    #[error("parameter '{0}' is not allowed by this pipeline (allowed: {1})")]
    ParamNotAllowed(String, String),
    /// A job parameter value the parameter does not accept.
    #[error("parameter '{0}' must be {1}")]
    InvalidParam(String, String),
}

/// All presets by name.
#[derive(Debug, Clone)]
pub struct Pipelines {
    presets: BTreeMap<String, Preset>,
}

impl Pipelines {
    /// The built-in presets, overridden or extended by `*.toml` files in `dir` when it exists.
    pub fn load(dir: &Path) -> Result<Pipelines, PipelineError> {
        let mut presets = BTreeMap::new();
        for (name, text) in BUILT_IN {
            presets.insert(name.to_string(), parse(name, text, dir)?);
        }
        if let Ok(entries) = std::fs::read_dir(dir) {
            for entry in entries.flatten() {
                let path = entry.path();
                let (Some(stem), Some("toml")) = (
                    path.file_stem().and_then(|s| s.to_str()),
                    path.extension().and_then(|s| s.to_str()),
                ) else {
                    continue;
                };
                let text = std::fs::read_to_string(&path).map_err(|e| PipelineError::Invalid {
                    file: path.display().to_string(),
                    reason: e.to_string(),
                })?;
                presets.insert(stem.to_string(), parse(stem, &text, dir)?);
            }
        }
        Ok(Pipelines { presets })
    }

    /// A preset by name.
    pub fn get(&self, name: &str) -> Option<&Preset> {
        self.presets.get(name)
    }

    /// Names of every preset.
    pub fn names(&self) -> Vec<&str> {
        self.presets.keys().map(String::as_str).collect()
    }

    /// The preset used when a job names none: `default`, or `draft` where no GPU is available.
    pub fn default_name(gpu_available: bool) -> &'static str {
        if gpu_available {
            "default"
        } else {
            "draft"
        }
    }
}

impl Preset {
    /// Checks per-job parameters against the allow-list and returns them as `--paramOverrides`
    /// entries, after the preset's own.
    pub fn overrides_with(&self, params: &BTreeMap<String, String>) -> Result<Vec<String>, PipelineError> {
        let mut all = self.overrides.clone();
        for (key, value) in params {
            let Some(param) = self.params.get(key) else {
                let allowed: Vec<&str> = self.params.keys().map(String::as_str).collect();
                return Err(PipelineError::ParamNotAllowed(key.clone(), allowed.join(", ")));
            };
            // The checks also keep out what Meshroom would read otherwise: `{Node.attr}` is a
            // link between nodes, and a value that is not of the attribute's type fails hours in.
            param
                .check(value)
                .map_err(|accepted| PipelineError::InvalidParam(key.clone(), accepted))?;
            all.push(format!("{key}={value}"));
        }
        Ok(all)
    }
}

fn parse(name: &str, text: &str, dir: &Path) -> Result<Preset, PipelineError> {
    let invalid = |reason: String| PipelineError::Invalid {
        file: format!("{name}.toml"),
        reason,
    };
    let mut preset: Preset = toml::from_str(text).map_err(|e| invalid(e.to_string()))?;
    preset.name = name.to_string();
    if preset.pipeline.ends_with(".mg") {
        let path: PathBuf = dir.join(&preset.pipeline);
        preset.pipeline = path.display().to_string();
    }
    // Meshroom's own pattern for overrides: (\w+)([:.])(\w[\w.]*)=(.*)
    let word = |s: &str| !s.is_empty() && s.chars().all(|c| c.is_alphanumeric() || c == '_' || c == '.');
    let override_keys = preset.overrides.iter().map(|o| o.split('=').next().unwrap_or(""));
    for p in preset.params.keys().map(String::as_str).chain(override_keys) {
        let ok = p
            .split_once([':', '.'])
            .is_some_and(|(node, param)| word(node) && word(param));
        if !ok {
            return Err(invalid(format!("'{p}' is not NodeType:param or NodeName.param")));
        }
    }
    Ok(preset)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_ins_load_with_their_gpu_needs() {
        let p = Pipelines::load(Path::new("/nonexistent")).unwrap();
        assert!(p.get("default").unwrap().gpu);
        assert!(!p.get("draft").unwrap().gpu);
        assert_eq!(p.get("draft").unwrap().pipeline, "photogrammetryDraft");
        assert!(p.get("high").is_some());
        assert_eq!(Pipelines::default_name(false), "draft");
    }

    #[test]
    fn params_are_checked_against_the_allow_list() {
        let p = Pipelines::load(Path::new("/nonexistent")).unwrap();
        let draft = p.get("draft").unwrap();
        let ok = BTreeMap::from([("Texturing:textureSide".to_string(), "4096".to_string())]);
        let all = draft.overrides_with(&ok).unwrap();
        assert_eq!(all.last().unwrap(), "Texturing:textureSide=4096");
        let bad = BTreeMap::from([("DepthMap:downscale".to_string(), "1".to_string())]);
        assert!(matches!(
            draft.overrides_with(&bad),
            Err(PipelineError::ParamNotAllowed(..))
        ));
        let nl = BTreeMap::from([("Texturing:textureSide".to_string(), "1\n2".to_string())]);
        assert!(matches!(
            draft.overrides_with(&nl),
            Err(PipelineError::InvalidParam(..))
        ));
    }

    #[test]
    fn params_are_checked_against_their_type_and_bounds() {
        let p = Pipelines::load(Path::new("/nonexistent")).unwrap();
        let check = |preset: &str, key: &str, value: &str| {
            let params = BTreeMap::from([(key.to_string(), value.to_string())]);
            p.get(preset)
                .unwrap()
                .overrides_with(&params)
                .map(|_| ())
                .map_err(|e| e.to_string())
        };
        for (preset, key, value) in [
            ("default", "DepthMap:downscale", "4"),
            ("draft", "Meshing:maxPoints", "100000"),
            ("draft", "MeshFiltering:keepLargestMeshOnly", "true"),
            ("draft", "FeatureExtraction:describerPreset", "ultra"),
            ("colmap-sparse", "SiftExtraction.max_image_size", "1600"),
        ] {
            assert_eq!(check(preset, key, value), Ok(()), "{key}={value}");
        }
        for (preset, key, value, says) in [
            ("default", "DepthMap:downscale", "0", "one of 1, 2, 4, 8, 16"),
            (
                "draft",
                "Meshing:maxPoints",
                "lots",
                "a whole number from 100000 to 10000000",
            ),
            ("draft", "Meshing:maxPoints", "99999", "from 100000"),
            (
                "draft",
                "Meshing:maxPoints",
                "{Texturing_1.textureSide}",
                "whole number",
            ),
            ("draft", "MeshFiltering:keepLargestMeshOnly", "yes", "true or false"),
            ("draft", "Texturing:textureSide", "4096.0", "one of 1024, 2048"),
            (
                "draft",
                "FeatureExtraction:describerPreset",
                "{CameraInit_1.output}",
                "one of low, medium",
            ),
            ("colmap-sparse", "Mapper.min_num_matches", "-1", "from 3 to 10000"),
        ] {
            let err = check(preset, key, value).unwrap_err();
            assert!(err.contains(says), "{key}={value}: {err}");
        }
        assert_eq!(Param::Float { min: 0.0, max: 1.0 }.check("0.5"), Ok(()));
        assert!(Param::Float { min: 0.0, max: 1.0 }.check("NaN").is_err());
    }

    #[test]
    fn folder_presets_resolve_mg_paths() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("custom.toml"),
            "description = \"x\"\nengine = \"meshroom\"\npipeline = \"custom.mg\"\ngpu = false\n",
        )
        .unwrap();
        let p = Pipelines::load(dir.path()).unwrap();
        assert_eq!(
            p.get("custom").unwrap().pipeline,
            dir.path().join("custom.mg").display().to_string()
        );
        std::fs::write(dir.path().join("bad.toml"), "engine = \"blender\"").unwrap();
        assert!(Pipelines::load(dir.path()).is_err());
    }
}
