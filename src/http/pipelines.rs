//! `GET /pipelines`: the presets a client may name, with the parameters each lets it set.

use crate::app::App;
use crate::pipelines::{Engine, Param, Preset};
use actix_web::{web, HttpResponse};
use serde::Serialize;
use std::collections::BTreeMap;
use utoipa::ToSchema;

pub(super) fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(super::resource("/pipelines", "GET").route(web::get().to(list)));
}

/// A preset as clients see it.
#[derive(Debug, Serialize, ToSchema)]
pub struct PipelineView {
    /// The name jobs give in `pipeline`.
    pub name: String,
    /// One line about it.
    pub description: String,
    /// `meshroom` or `colmap`.
    pub engine: String,
    /// True when it needs a CUDA GPU.
    pub gpu: bool,
    /// True when this deployment takes jobs of it (GPU presets need GPU workers).
    pub available: bool,
    /// True for the preset of jobs that name none.
    pub default: bool,
    /// Parameters a job may set (`params`), by name.
    pub params: BTreeMap<String, ParamView>,
}

/// What a parameter accepts.
#[derive(Debug, Serialize, ToSchema)]
pub struct ParamView {
    /// `int`, `float`, `bool` or `choice`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// Smallest value (`int`, `float`).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<f64>)]
    pub min: Option<serde_json::Value>,
    /// Largest value (`int`, `float`).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<f64>)]
    pub max: Option<serde_json::Value>,
    /// The values allowed (`choice`), as a job writes them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub values: Option<Vec<String>>,
}

impl From<&Param> for ParamView {
    fn from(p: &Param) -> ParamView {
        let range = |kind, min: serde_json::Value, max: serde_json::Value| ParamView {
            kind,
            min: Some(min),
            max: Some(max),
            values: None,
        };
        match p {
            Param::Int { min, max } => range("int", (*min).into(), (*max).into()),
            Param::Float { min, max } => range("float", (*min).into(), (*max).into()),
            Param::Bool => ParamView {
                kind: "bool",
                min: None,
                max: None,
                values: None,
            },
            Param::Choice { .. } => ParamView {
                kind: "choice",
                min: None,
                max: None,
                values: Some(p.choices()),
            },
        }
    }
}

fn view(app: &App, p: &Preset) -> PipelineView {
    PipelineView {
        name: p.name.clone(),
        description: p.description.clone(),
        engine: match p.engine {
            Engine::Meshroom => "meshroom",
            Engine::Colmap => "colmap",
        }
        .to_string(),
        gpu: p.gpu,
        available: !p.gpu || app.gpu_available(),
        default: p.name == app.default_pipeline(),
        params: p.params.iter().map(|(k, v)| (k.clone(), v.into())).collect(),
    }
}

#[utoipa::path(get, path = "/api/v1/pipelines", tag = "jobs",
    responses((status = 200, body = [PipelineView]), (status = 401, body = super::ErrorBody)),
    security(("api_key" = [])))]
pub(super) async fn list(app: web::Data<App>) -> HttpResponse {
    let all: Vec<PipelineView> = app
        .pipelines
        .names()
        .into_iter()
        .filter_map(|n| app.pipelines.get(n))
        .map(|p| view(&app, p))
        .collect();
    HttpResponse::Ok().json(all)
}
