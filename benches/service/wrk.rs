//! HTTP load with wrk (Debian's package): closed-loop clients on keep-alive connections.

use std::path::Path;
use std::process::Command;

/// What wrk measured.
#[derive(Debug)]
pub struct Wrk {
    pub requests: u64,
    pub rate: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    /// Non-2xx/3xx answers and socket errors.
    pub errors: u64,
}

/// Runs wrk for `secs` with `connections` on `url`, with an optional Lua script.
pub fn run(url: &str, connections: usize, secs: u64, script: Option<&Path>) -> Wrk {
    let mut cmd = Command::new("wrk");
    cmd.args(["--latency", "-t", &connections.min(2).to_string()]).args([
        "-c",
        &connections.to_string(),
        "-d",
        &format!("{secs}s"),
    ]);
    if let Some(s) = script {
        cmd.arg("-s").arg(s);
    }
    let out = cmd
        .arg(url)
        .output()
        .expect("wrk runs: scripts/bench installs it (Debian package wrk)");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "wrk failed: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    parse(&text)
}

fn parse(text: &str) -> Wrk {
    let field = |prefix: &str| {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(prefix).map(|r| r.trim().to_string()))
    };
    let latency = |pct: &str| field(pct).map_or(f64::NAN, |v| millis(&v));
    let socket_errors: u64 = field("Socket errors:").map_or(0, |v| {
        v.split(',')
            .filter_map(|p| p.split_whitespace().last()?.parse::<u64>().ok())
            .sum()
    });
    let requests = text
        .lines()
        .find(|l| l.contains(" requests in "))
        .and_then(|l| l.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    Wrk {
        requests,
        rate: field("Requests/sec:").and_then(|v| v.parse().ok()).unwrap_or(0.0),
        p50_ms: latency("50%"),
        p99_ms: latency("99%"),
        errors: socket_errors
            + field("Non-2xx or 3xx responses:")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0),
    }
}

/// wrk's durations: `523.00us`, `12.34ms`, `1.20s`, `2.00m`.
fn millis(v: &str) -> f64 {
    let split = v.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(v.len());
    let (n, unit) = v.split_at(split);
    let n: f64 = n.parse().unwrap_or(f64::NAN);
    match unit {
        "us" => n / 1e3,
        "ms" => n,
        "s" => n * 1e3,
        "m" => n * 60e3,
        _ => f64::NAN,
    }
}

/// A Lua script that POSTs `body` as JSON.
pub fn post_json_script(dir: &Path, body: &str) -> std::path::PathBuf {
    let path = dir.join("post.lua");
    let script = format!(
        "wrk.method = \"POST\"\nwrk.headers[\"Content-Type\"] = \"application/json\"\nwrk.body = [==[{body}]==]\n"
    );
    std::fs::write(&path, script).unwrap();
    path
}

/// A Lua script that GETs `/api/v1/jobs/{id}` for ids picked at random from `ids`.
pub fn get_jobs_script(dir: &Path, ids: &[String]) -> std::path::PathBuf {
    let list = dir.join("ids.txt");
    std::fs::write(&list, ids.join("\n")).unwrap();
    let path = dir.join("get.lua");
    let script = format!(
        "local ids = {{}}\nfor line in io.lines(\"{}\") do ids[#ids + 1] = line end\n\
         request = function() return wrk.format(\"GET\", \"/api/v1/jobs/\" .. ids[math.random(#ids)]) end\n",
        list.display()
    );
    std::fs::write(&path, script).unwrap();
    path
}
