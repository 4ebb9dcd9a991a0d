//! Merges the file's table with `MESHROOM_SVC_<SECTION>_<KEY>` variables, checking every key and type
//! against the defaults so that all mistakes are reported together (serde stops at the first).

use super::Config;
use toml::{Table, Value};

/// Variables of the `MESHROOM_SVC_` family that are not settings: the secrets.
pub(super) const SECRET_VARS: [&str; 4] = [
    "MESHROOM_SVC_API_KEYS",
    "MESHROOM_SVC_WEBHOOK_SECRET",
    "MESHROOM_SVC_AMQP_URL",
    "MESHROOM_SVC_DATABASE_URL",
];

/// Returns the file's table with environment overrides applied; pushes every problem found.
pub(super) fn merge(mut file: Table, env: &[(String, String)], problems: &mut Vec<String>) -> Table {
    let defaults = match Value::try_from(Config::default()) {
        Ok(Value::Table(t)) => t,
        _ => unreachable!("Config serializes to a table"),
    };
    check_against_defaults(&mut file, &defaults, problems);
    // A misspelt variable would otherwise be ignored without a word, like an unknown key would not.
    for (name, _) in env {
        if !name.starts_with("MESHROOM_SVC_") {
            continue;
        }
        let known = SECRET_VARS.contains(&name.as_str())
            || defaults.iter().any(|(section, keys)| {
                let Value::Table(keys) = keys else { return false };
                keys.keys()
                    .any(|key| format!("MESHROOM_SVC_{section}_{key}").to_uppercase() == *name)
            });
        if !known {
            problems.push(format!(
                "{name}: no such setting (settings are MESHROOM_SVC_<SECTION>_<KEY>, see meshroom.toml)"
            ));
        }
    }
    for (section, keys) in &defaults {
        let Value::Table(keys) = keys else { continue };
        for (key, default) in keys {
            let name = format!("MESHROOM_SVC_{}_{}", section, key).to_uppercase();
            let Some((_, raw)) = env.iter().find(|(k, _)| *k == name) else {
                continue;
            };
            match parse_like(default, raw) {
                Ok(value) => {
                    let entry = file
                        .entry(section.clone())
                        .or_insert_with(|| Value::Table(Table::new()));
                    if let Value::Table(t) = entry {
                        t.insert(key.clone(), value);
                    }
                }
                Err(expected) => problems.push(format!("{name}: '{raw}' is not {expected}")),
            }
        }
    }
    file
}

/// Drops (and reports) unknown sections, unknown keys and values of the wrong type.
fn check_against_defaults(file: &mut Table, defaults: &Table, problems: &mut Vec<String>) {
    file.retain(|section, value| {
        // A map by tenant name: serde checks each tenant's keys (deny_unknown_fields).
        if section == "tenants" {
            return true;
        }
        let Some(Value::Table(known)) = defaults.get(section) else {
            problems.push(format!("[{section}]: unknown section"));
            return false;
        };
        let Value::Table(keys) = value else {
            problems.push(format!("{section}: must be a table"));
            return false;
        };
        keys.retain(|key, v| match known.get(key) {
            None => {
                problems.push(format!("{section}.{key}: unknown key"));
                false
            }
            Some(default) if !same_type(default, v) => {
                problems.push(format!(
                    "{section}.{key}: expected {}, got {}",
                    describe(default),
                    describe(v)
                ));
                false
            }
            Some(_) => true,
        });
        true
    });
}

fn same_type(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Array(x), Value::Array(y)) => match x.first() {
            Some(first) => y.iter().all(|v| same_type(first, v)),
            None => true,
        },
        (Value::Integer(_), Value::Integer(i)) => *i >= 0,
        _ => std::mem::discriminant(a) == std::mem::discriminant(b),
    }
}

fn describe(v: &Value) -> &'static str {
    match v {
        Value::Integer(i) if *i < 0 => "a negative integer",
        Value::Integer(_) => "a non-negative integer",
        Value::String(_) => "a string",
        Value::Boolean(_) => "true or false",
        Value::Array(items) if matches!(items.first(), Some(Value::Integer(_))) => "a list of non-negative integers",
        Value::Array(_) => "a list",
        _ => "another type",
    }
}

/// Parses an environment string as the same TOML type as `default`.
fn parse_like(default: &Value, raw: &str) -> Result<Value, &'static str> {
    let int = |s: &str| s.trim().parse::<u32>().map(|i| Value::Integer(i.into()));
    match default {
        Value::String(_) => Ok(Value::String(raw.to_string())),
        Value::Integer(_) => raw
            .trim()
            .parse::<i64>()
            .ok()
            .filter(|i| *i >= 0)
            .map(Value::Integer)
            .ok_or(describe(default)),
        Value::Boolean(_) => match raw.trim() {
            "true" | "1" => Ok(Value::Boolean(true)),
            "false" | "0" => Ok(Value::Boolean(false)),
            _ => Err(describe(default)),
        },
        Value::Array(items) if matches!(items.first(), Some(Value::Integer(_))) => raw
            .split(',')
            .filter(|s| !s.trim().is_empty())
            .map(int)
            .collect::<Result<Vec<_>, _>>()
            .map(Value::Array)
            .map_err(|_| describe(default)),
        Value::Array(_) => Ok(Value::Array(
            raw.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|s| Value::String(s.into()))
                .collect(),
        )),
        _ => Err("supported"),
    }
}
