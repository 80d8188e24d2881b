//! The built binary as a child process, beside an in-process verifying stand-in.
//!
//! Signals, reloads and metrics belong to the process, so these tests run the real binary
//! and read its JSON logs.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use agent_access_proxy::secret::Secret;
use agent_access_proxy::signing::SignatureEncoding;
use agent_access_proxy::standin::StandIn;
use serde_json::Value;
use tokio::net::TcpListener;

pub const WORKSPACE: &str = "ws_ops";
pub const KEY_ID: &str = "key_ops_1";
/// Distinctive, so that a scan of any output for it cannot match by accident.
pub const SECRET: &str = "ops-secret-5d2c91f4-never-printed";

pub fn api(suffix: &str) -> String {
    format!("/agent-api/v1/workspaces/{WORKSPACE}/{suffix}")
}

/// Starts a stand-in trusting `KEY_ID` and returns it with its base URL.
pub async fn start_stand_in() -> (Arc<StandIn>, String) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let stand_in = StandIn::new(WORKSPACE, "", SignatureEncoding::Hex);
    stand_in.add_key(KEY_ID, Secret::new(SECRET.as_bytes().to_vec()).unwrap());
    tokio::spawn(Arc::clone(&stand_in).serve(listener, None, std::future::pending()));
    (stand_in, format!("http://{address}"))
}

/// Writes a configuration for `upstream_url` with the secret in `dir/secret`. `extra` is
/// TOML appended to the sections: each entry is (section, lines).
pub fn write_config(dir: &Path, upstream_url: &str, extra: &[(&str, &str)]) -> PathBuf {
    let secret_path = dir.join("secret");
    if !secret_path.exists() {
        std::fs::write(&secret_path, format!("{SECRET}\n")).unwrap();
    }
    let section = |name: &str| {
        extra
            .iter()
            .filter(|(section, _)| *section == name)
            .map(|(_, lines)| format!("{lines}\n"))
            .collect::<String>()
    };
    let key_lines = if section("key").contains("id_file") {
        section("key")
    } else {
        format!(
            "id = \"{KEY_ID}\"\nsecret_file = {secret_path:?}\n{}",
            section("key")
        )
    };
    let text = format!(
        "[listen]\naddress = \"127.0.0.1:0\"\n{}\n\
         [admin]\naddress = \"127.0.0.1:0\"\n{}\n\
         [upstream]\nurl = \"{upstream_url}\"\n{}\n\
         [key]\n{key_lines}\n\
         [policy]\nworkspace = \"{WORKSPACE}\"\nscopes = [\"env:read\", \"artifacts:write\", \"events:write\"]\n{}\n\
         [log]\nformat = \"json\"\nlevel = \"info\"\n",
        section("listen"),
        section("admin"),
        section("upstream"),
        section("policy"),
    );
    let path = dir.join("proxy.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// A running `agent-access-proxy run`, killed on drop.
pub struct ProxyProcess {
    child: Child,
    pub listen: SocketAddr,
    pub admin: SocketAddr,
    logs: Arc<Mutex<Vec<String>>>,
}

impl ProxyProcess {
    /// Starts the binary and waits (up to 20 s) for its start-up log line.
    pub fn start(config: &Path) -> ProxyProcess {
        ProxyProcess::start_with_env(config, &[])
    }

    /// Like `start`, with extra environment variables for the child.
    pub fn start_with_env(config: &Path, environment: &[(&str, &str)]) -> ProxyProcess {
        let mut child = Command::new(env!("CARGO_BIN_EXE_agent-access-proxy"))
            .args(["run", "--config"])
            .arg(config)
            .env_remove("RUST_LOG")
            .envs(environment.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the binary starts");

        let logs = Arc::new(Mutex::new(Vec::new()));
        let stderr = child.stderr.take().unwrap();
        let sink = logs.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });

        let started = wait_for(Duration::from_secs(20), || {
            logs.lock().unwrap().iter().find_map(|line| {
                let entry: Value = serde_json::from_str(line).ok()?;
                (entry["message"] == "agent-access-proxy started").then_some(entry)
            })
        });
        let Some(started) = started else {
            let _ = child.kill();
            panic!("the proxy did not start; logs: {:#?}", logs.lock().unwrap());
        };
        ProxyProcess {
            child,
            listen: started["listen"].as_str().unwrap().parse().unwrap(),
            admin: started["admin"].as_str().unwrap().parse().unwrap(),
            logs,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.listen)
    }

    pub fn logs(&self) -> Vec<String> {
        self.logs.lock().unwrap().clone()
    }

    /// Returns the parsed JSON log entries whose message contains `text`.
    pub fn log_entries(&self, text: &str) -> Vec<Value> {
        self.logs()
            .iter()
            .filter_map(|line| serde_json::from_str::<Value>(line).ok())
            .filter(|entry| {
                entry["message"]
                    .as_str()
                    .is_some_and(|message| message.contains(text))
            })
            .collect()
    }

    /// Waits up to `timeout` for a log entry whose message contains `text`.
    pub fn wait_for_log(&self, text: &str, timeout: Duration) -> Value {
        wait_for(timeout, || self.log_entries(text).pop()).unwrap_or_else(|| {
            panic!(
                "no log line with {text:?} within {timeout:?}; logs: {:#?}",
                self.logs()
            )
        })
    }

    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args(["-s", name, &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill -s {name}");
    }

    /// Waits up to `timeout` for the process to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let child = &mut self.child;
        wait_for(timeout, || child.try_wait().unwrap()).expect("the proxy exits in time")
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for ProxyProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls `check` every 20 ms until it returns `Some` or `timeout` passes.
pub fn wait_for<T>(timeout: Duration, mut check: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check() {
            return Some(value);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// One sample of a Prometheus text exposition.
#[derive(Debug)]
pub struct Sample {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

impl Sample {
    pub fn label(&self, name: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    }
}

/// Parses Prometheus text format: comments, and `name{label="value",...} number` lines.
/// Panics on a line that is neither, so a malformed exposition fails the test.
pub fn parse_prometheus(text: &str) -> Vec<Sample> {
    let mut samples = Vec::new();
    for line in text
        .lines()
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
    {
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("bad line {line:?}"));
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("bad value in {line:?}"));
        let (name, labels) = match series.split_once('{') {
            Some((name, rest)) => (
                name,
                parse_labels(rest.strip_suffix('}').expect("labels end with }")),
            ),
            None => (series, Vec::new()),
        };
        assert!(
            name.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b':'),
            "bad name {name:?}"
        );
        samples.push(Sample {
            name: name.to_owned(),
            labels,
            value,
        });
    }
    samples
}

fn parse_labels(text: &str) -> Vec<(String, String)> {
    let mut labels = Vec::new();
    let mut rest = text;
    while !rest.is_empty() {
        let (key, after) = rest
            .split_once("=\"")
            .unwrap_or_else(|| panic!("bad labels {text:?}"));
        let end = after
            .find('"')
            .unwrap_or_else(|| panic!("unterminated label in {text:?}"));
        labels.push((key.to_owned(), after[..end].to_owned()));
        rest = after[end + 1..].trim_start_matches(',');
    }
    labels
}

/// Sums the samples of `name` whose labels include every pair of `labels`.
pub fn sum(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|sample| sample.name == name)
        .filter(|sample| {
            labels
                .iter()
                .all(|(key, value)| sample.label(key) == Some(value))
        })
        .map(|sample| sample.value)
        .sum()
}
