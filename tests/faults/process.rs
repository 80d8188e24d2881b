//! The built binary as a child process: its configuration, JSON logs, `/metrics` and what
//! `/proc` shows of it.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub const WORKSPACE: &str = "ws_faults";
pub const KEY_ID: &str = "key_faults_1";
/// Distinctive, so that a scan of any output for it cannot match by accident.
pub const SECRET: &str = "faults-secret-3f8a61c2-never-printed";

pub const REQUESTS_TOTAL: &str = "agent_access_proxy_requests_total";
pub const IN_FLIGHT: &str = "agent_access_proxy_requests_in_flight";
pub const BUFFERED_BODY_BYTES: &str = "agent_access_proxy_buffered_body_bytes";

pub fn api(suffix: &str) -> String {
    format!("/agent-api/v1/workspaces/{WORKSPACE}/{suffix}")
}

/// Writes a configuration for `upstream_url` with the secret in `dir/secret`. `extra` is
/// TOML appended to the sections: each entry is (section, lines).
pub fn write_config(dir: &Path, upstream_url: &str, extra: &[(&str, &str)]) -> PathBuf {
    let secret_path = dir.join("secret");
    std::fs::write(&secret_path, format!("{SECRET}\n")).unwrap();
    let section = |name: &str| {
        extra
            .iter()
            .filter(|(section, _)| *section == name)
            .map(|(_, lines)| format!("{lines}\n"))
            .collect::<String>()
    };
    let text = format!(
        "[listen]\naddress = \"127.0.0.1:0\"\n{}\n\
         [admin]\naddress = \"127.0.0.1:0\"\n\n\
         [upstream]\nurl = \"{upstream_url}\"\n{}\n\
         [key]\nid = \"{KEY_ID}\"\nsecret_file = {secret_path:?}\n\n\
         [policy]\nworkspace = \"{WORKSPACE}\"\nscopes = [\"env:read\", \"artifacts:write\", \"events:write\"]\n{}\n\
         [log]\nformat = \"json\"\nlevel = \"info\"\n",
        section("listen"),
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

    /// Like `start`, with extra environment variables for the child. `SSL_CERT_FILE` and
    /// `SSL_CERT_DIR` are removed first, so the platform roots are the host's unless a
    /// test sets them.
    pub fn start_with_env(config: &Path, environment: &[(&str, &str)]) -> ProxyProcess {
        let mut child = Command::new(env!("CARGO_BIN_EXE_agent-access-proxy"))
            .args(["run", "--config"])
            .arg(config)
            .env_remove("RUST_LOG")
            .env_remove("SSL_CERT_FILE")
            .env_remove("SSL_CERT_DIR")
            .envs(environment.iter().copied())
            .stdin(Stdio::null())
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

        let deadline = Instant::now() + Duration::from_secs(20);
        let started = loop {
            let found = logs.lock().unwrap().iter().find_map(|line| {
                let entry: Value = serde_json::from_str(line).ok()?;
                (entry["message"] == "agent-access-proxy started").then_some(entry)
            });
            if let Some(entry) = found {
                break entry;
            }
            if Instant::now() > deadline || child.try_wait().unwrap().is_some() {
                let _ = child.kill();
                panic!("the proxy did not start; logs: {:#?}", logs.lock().unwrap());
            }
            std::thread::sleep(Duration::from_millis(20));
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

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn logs(&self) -> Vec<String> {
        self.logs.lock().unwrap().clone()
    }

    /// Returns the parsed JSON log entries whose message is exactly `message`.
    pub fn log_entries(&self, message: &str) -> Vec<Value> {
        self.logs()
            .iter()
            .filter_map(|line| serde_json::from_str::<Value>(line).ok())
            .filter(|entry| entry["message"] == message)
            .collect()
    }

    /// Waits up to `timeout` for a log entry with `message` whose fields include every
    /// pair of `fields`, and returns it.
    pub async fn wait_for_log(
        &self,
        message: &str,
        fields: &[(&str, &str)],
        timeout: Duration,
    ) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let found = self.log_entries(message).into_iter().find(|entry| {
                fields
                    .iter()
                    .all(|(key, value)| entry[*key].as_str() == Some(*value))
            });
            if let Some(entry) = found {
                return entry;
            }
            assert!(
                Instant::now() < deadline,
                "no log entry {message:?} with {fields:?} within {timeout:?}; logs: {:#?}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Sends `GET path` to the admin listener and returns the status and body.
    pub async fn admin_get(&self, path: &str) -> (u16, String) {
        let mut stream = TcpStream::connect(self.admin).await.unwrap();
        let request = format!("GET {path} HTTP/1.1\r\nhost: admin\r\nconnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut response = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut response))
            .await
            .expect("the admin listener answers within 10 s")
            .unwrap();
        let text = String::from_utf8(response).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").expect("a complete response");
        let status = head.split(' ').nth(1).unwrap().parse().unwrap();
        (status, body.to_owned())
    }

    pub async fn scrape(&self) -> Vec<Sample> {
        let (status, body) = self.admin_get("/metrics").await;
        assert_eq!(status, 200, "/metrics: {body}");
        parse_prometheus(&body)
    }

    /// Returns the sum of the samples of `name` with every pair of `labels`.
    pub async fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        sum(&self.scrape().await, name, labels)
    }

    /// Waits up to `timeout` until the sum of `name` with `labels` equals `expected`.
    pub async fn wait_for_metric(
        &self,
        name: &str,
        labels: &[(&str, &str)],
        expected: f64,
        timeout: Duration,
    ) {
        let deadline = Instant::now() + timeout;
        loop {
            let value = self.metric(name, labels).await;
            if value == expected {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{name}{labels:?} is {value}, expected {expected} within {timeout:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Counts the open file descriptors. Fails with PermissionDenied when the test runs
    /// without CAP_SYS_PTRACE, because the proxy marks itself non-dumpable.
    pub fn open_fds(&self) -> std::io::Result<usize> {
        Ok(std::fs::read_dir(format!("/proc/{}/fd", self.pid()))?.count())
    }

    /// Returns a memory field of `/proc/PID/status` in KiB, such as `VmRSS` (resident now)
    /// or `VmHWM` (peak resident).
    pub fn memory_kib(&self, field: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        let line = status
            .lines()
            .find(|line| line.starts_with(&format!("{field}:")))
            .unwrap_or_else(|| panic!("no {field} in /proc/PID/status: {status}"));
        let value = line.split_whitespace().nth(1).unwrap();
        assert!(line.ends_with("kB"), "{line}");
        value.parse().unwrap()
    }
}

impl Drop for ProxyProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Returns the open file descriptors of `proxy` once the count has stopped changing, or
/// `None` after printing why they cannot be counted, so a test skips only its descriptor
/// checks. The count settles because the proxy closes its side of a connection the test
/// closed a moment after the test moved on.
pub async fn settled_fds_or_skip(proxy: &ProxyProcess) -> Option<usize> {
    let mut last = match proxy.open_fds() {
        Ok(count) => count,
        Err(error) if error.kind() == std::io::ErrorKind::PermissionDenied => {
            eprintln!(
                "skipping the file descriptor checks: /proc/{}/fd is not readable ({error}), \
                 because the proxy marks itself non-dumpable; run the tests as root or with \
                 CAP_SYS_PTRACE to include them",
                proxy.pid()
            );
            return None;
        }
        Err(error) => panic!("cannot read /proc/{}/fd: {error}", proxy.pid()),
    };
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut unchanged = 0;
    while unchanged < 4 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let count = proxy.open_fds().unwrap();
        unchanged = if count == last { unchanged + 1 } else { 0 };
        last = count;
    }
    Some(last)
}

/// Waits up to `timeout` until `proxy` has at most `expected` open file descriptors, and
/// returns the last count.
pub async fn wait_for_fds_at_most(
    proxy: &ProxyProcess,
    expected: usize,
    timeout: Duration,
) -> usize {
    let deadline = Instant::now() + timeout;
    loop {
        let count = proxy.open_fds().unwrap();
        if count <= expected || Instant::now() > deadline {
            return count;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
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
