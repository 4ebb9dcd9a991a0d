//! Config tests: defaults, the sample file, environment overrides, problems, tenancy.

use super::*;

fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

#[test]
fn empty_file_gives_defaults() {
    let c = Config::from_parts("", &[]).unwrap();
    assert_eq!(c, Config::default());
}

#[test]
fn sample_config_matches_defaults() {
    // meshroom.toml documents every key with its default: loading it must change nothing.
    let text = include_str!("../../meshroom.toml");
    assert_eq!(Config::from_parts(text, &[]).unwrap(), Config::default());
}

#[test]
fn readme_documents_every_key() {
    let readme = include_str!("../../README.md");
    let Ok(toml::Value::Table(sections)) = toml::Value::try_from(Config::default()) else {
        unreachable!("Config serializes to a table")
    };
    for (section, keys) in sections {
        let toml::Value::Table(keys) = keys else { continue };
        for key in keys.keys() {
            let row = format!("| `{section}.{key}` |");
            assert!(readme.contains(&row), "README's configuration table lacks {row}");
        }
    }
}

#[test]
fn tenants_have_their_own_limits_and_webhook_secret() {
    let text = "[quota]\nmax_active_jobs = 10\n[tenants.acme]\nmax_active_jobs = 3\nwebhook_secret_env = \"ACME_WH\"\n";
    let secret = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";
    let c = Config::from_parts(text, &env(&[("ACME_WH", secret)])).unwrap();
    let of = |t| limits_of(&c.rate_limit, &c.quota, &c.tenants, t);
    assert_eq!((of("acme").max_active_jobs, of("other").max_active_jobs), (3, 10));
    assert!(c.secrets.tenant_webhook_secrets.contains_key("acme"));
    let err = Config::from_parts(text, &[]).unwrap_err().0.join("\n");
    assert!(err.contains("ACME_WH is not set"), "{err}");
    let err = Config::from_parts("[tenants.acme]\nmax_jobs = 1\n[tenants.Bad]\n", &[])
        .unwrap_err()
        .0
        .join("\n");
    assert!(err.contains("max_jobs"), "{err}");
    let err = Config::from_parts("[tenants.Bad]\n", &[]).unwrap_err().0.join("\n");
    assert!(err.contains("[tenants.Bad]"), "{err}");
}

#[test]
fn oidc_refuses_symmetric_and_none_algorithms() {
    let text = "[oidc]\nissuer = \"https://i\"\naudience = \"a\"\njwks_url = \"https://i/jwks\"\n";
    assert!(Config::from_parts(text, &[]).is_ok());
    for alg in ["HS256", "none"] {
        let bad = format!("{text}algorithms = [\"{alg}\"]\n");
        let err = Config::from_parts(&bad, &[]).unwrap_err().0.join("\n");
        assert!(err.contains(&format!("'{alg}' is not accepted")), "{err}");
    }
    let err = Config::from_parts("[oidc]\nissuer = \"https://i\"\n", &[])
        .unwrap_err()
        .0
        .join("\n");
    assert!(err.contains("oidc.audience") && err.contains("jwks_url"), "{err}");
}

#[test]
fn env_overrides_file() {
    let c = Config::from_parts(
        "[limits]\nmax_images = 10\n",
        &env(&[
            ("MESHROOM_SVC_LIMITS_MAX_IMAGES", "20"),
            ("MESHROOM_SVC_WEBHOOK_SCHEDULE_SECS", "0,1"),
        ]),
    )
    .unwrap();
    assert_eq!(c.limits.max_images, 20);
    assert_eq!(c.webhook.schedule_secs, vec![0, 1]);
}

#[test]
fn all_problems_are_listed_at_once() {
    let err = Config::from_parts(
        "[server]\nlisten = \"nowhere\"\nbogus = 1\n[limits]\nmax_images = \"many\"\n[nope]\n",
        &env(&[("MESHROOM_SVC_WORKER_KEEP_FAILED_WORKDIR", "maybe")]),
    )
    .unwrap_err();
    let all = err.0.join("\n");
    for needle in [
        "server.bogus",
        "limits.max_images",
        "[nope]",
        "MESHROOM_SVC_WORKER_KEEP_FAILED_WORKDIR",
    ] {
        assert!(all.contains(needle), "{needle} missing from {all}");
    }
}

#[test]
fn unknown_variables_and_zero_limits_are_refused() {
    let err = Config::from_parts(
        "[limits]\nmax_image_pixels = 0\n",
        &env(&[
            ("MESHROOM_SVC_LIMITS_MAX_IMAGE", "20"),
            ("MESHROOM_SVC_LIMITS_max_images", "20"),
            ("MESHROOM_SVC_API_KEYS", "k"),
            ("MESHROOM_TEST_OTHER", "x"),
        ]),
    )
    .unwrap_err();
    let all = err.0.join("\n");
    assert!(all.contains("MESHROOM_SVC_LIMITS_MAX_IMAGE:"), "{all}");
    assert!(all.contains("MESHROOM_SVC_LIMITS_max_images"), "{all}");
    assert!(all.contains("limits.max_image_pixels: must be greater than 0"), "{all}");
    assert!(!all.contains("API_KEYS") && !all.contains("MESHROOM_TEST"), "{all}");
    assert_eq!(err.0.len(), 3, "{all}");
}

#[test]
fn networks_and_the_webhook_secret_are_checked_when_read() {
    let bad_net = Config::from_parts("[security]\nallowed_networks = [\"10.0.0.0/99\"]\n", &[]).unwrap_err();
    assert!(
        bad_net.to_string().contains("'10.0.0.0/99' is not a CIDR network"),
        "{bad_net}"
    );
    let from_env = env(&[("MESHROOM_SVC_SECURITY_ALLOWED_NETWORKS", "10.0.0.0/8,192.168.1.20")]);
    let c = Config::from_parts("", &from_env).unwrap();
    assert_eq!(c.security.allowed_networks.nets().len(), 2);
    let bad_secret = Config::from_parts("", &env(&[("MESHROOM_SVC_WEBHOOK_SECRET", "whsec_!!")])).unwrap_err();
    assert!(
        bad_secret.to_string().contains("expected whsec_ followed by base64"),
        "{bad_secret}"
    );
    assert!(!bad_secret.to_string().contains("!!"), "the value is not echoed");
}

#[test]
fn secrets_come_from_env_and_are_not_printed() {
    let c = Config::from_parts(
        "",
        &env(&[
            ("MESHROOM_SVC_API_KEYS", "k1, k2,"),
            ("MESHROOM_SVC_WEBHOOK_SECRET", "whsec_c2VjcmV0"),
        ]),
    )
    .unwrap();
    let keys: Vec<&str> = c.secrets.api_keys.iter().map(|k| k.expose_secret()).collect();
    assert_eq!(keys, vec!["k1", "k2"]);
    let printed = format!("{c:?}");
    assert!(!printed.contains("k1") && !printed.contains("c2VjcmV0"), "{printed}");
}

#[test]
fn http_workers_are_one_per_core_unless_set() {
    let cores = std::thread::available_parallelism().unwrap().get();
    let auto = Config::from_parts("", &env(&[])).unwrap();
    assert_eq!(auto.server.workers(), cores);
    let set = Config::from_parts("", &env(&[("MESHROOM_SVC_SERVER_HTTP_WORKERS", "3")])).unwrap();
    assert_eq!(set.server.workers(), 3);
    let err = Config::from_parts("[server]\nhttp_workers = 100000\n", &env(&[])).unwrap_err();
    assert!(err.0.join("\n").contains("server.http_workers"), "{err:?}");
}
