//! End-to-end tests of the built binary: help text, `check-config`, `run`, `sign`, `routes`,
//! `stand-in` and `demo`. Every server here is started by the test on a loopback port, and
//! every child process is killed when its guard drops.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use base64::Engine as _;

const BIN: &str = env!("CARGO_BIN_EXE_agent-access-proxy");

/// Time any one child process or server gets to reach the next step before the test fails.
const TIMEOUT: Duration = Duration::from_secs(10);

/// A secret distinctive enough that finding it in an output cannot be a coincidence.
const SECRET: &str = "zq7-SECRET-marker-4f9c1e-do-not-print";

/// Exit code of an invalid configuration or argument (EX_USAGE in sysexits(3)).
const EXIT_USAGE: i32 = 64;

/// The seven built-in routes as the API documents them: method, path template, scope.
const BUILT_IN_ROUTES: [(&str, &str, &str); 7] = [
    (
        "GET",
        "/agent-api/v1/workspaces/{ws}/environment",
        "env:read",
    ),
    ("GET", "/agent-api/v1/workspaces/{ws}/prompts", "env:read"),
    ("GET", "/agent-api/v1/workspaces/{ws}/file-tree", "env:read"),
    (
        "GET",
        "/agent-api/v1/workspaces/{ws}/files/{node}",
        "env:read",
    ),
    (
        "POST",
        "/agent-api/v1/workspaces/{ws}/artifacts",
        "artifacts:write",
    ),
    (
        "POST",
        "/agent-api/v1/workspaces/{ws}/files/{node}/proposals",
        "files:propose",
    ),
    (
        "POST",
        "/agent-api/v1/workspaces/{ws}/events",
        "events:write",
    ),
];

// ---------------------------------------------------------------------------------------
// Child processes
// ---------------------------------------------------------------------------------------

/// Builds a command for the binary with a predictable environment: no configuration
/// overrides or log filter inherited from the developer's shell.
fn command(args: &[&str]) -> Command {
    let mut command = Command::new(BIN);
    command.args(args).stdin(Stdio::null());
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("AGENT_ACCESS_PROXY") {
            command.env_remove(name);
        }
    }
    command.env_remove("RUST_LOG");
    command
}

/// A finished child process.
struct Finished {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

impl Finished {
    fn code(&self) -> Option<i32> {
        self.status.code()
    }

    /// Standard output and standard error, for assertion messages.
    fn describe(&self) -> String {
        format!(
            "status {}\n--- stdout\n{}\n--- stderr\n{}",
            self.status, self.stdout, self.stderr
        )
    }
}

fn read_all(stream: impl Read + Send + 'static) -> JoinHandle<String> {
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        let mut stream = stream;
        let _ = stream.read_to_end(&mut bytes);
        String::from_utf8_lossy(&bytes).into_owned()
    })
}

/// Runs `command` to its end, killing it after [`TIMEOUT`] so that a test cannot hang.
fn run_bounded(mut command: Command) -> Finished {
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the binary");
    let stdout = read_all(child.stdout.take().unwrap());
    let stderr = read_all(child.stderr.take().unwrap());

    let status = wait_bounded(&mut child, TIMEOUT);
    let stdout = stdout.join().expect("stdout reader");
    let stderr = stderr.join().expect("stderr reader");
    match status {
        Some(status) => Finished {
            status,
            stdout,
            stderr,
        },
        None => panic!("the command did not exit within {TIMEOUT:?}: {command:?}\n--- stdout\n{stdout}\n--- stderr\n{stderr}"),
    }
}

fn run_args(args: &[&str]) -> Finished {
    run_bounded(command(args))
}

/// Waits up to `timeout` for `child` to exit, and kills and reaps it on timeout.
fn wait_bounded(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().expect("poll the child") {
            return Some(status);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Which stream of a running child a line came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stream {
    Stdout,
    Stderr,
}

/// A long-running child process, killed and reaped when the guard drops.
struct Running {
    child: Child,
    lines: Receiver<(Stream, String)>,
    /// Every line received so far, for assertion messages.
    seen: Vec<(Stream, String)>,
}

impl Running {
    fn start(mut command: Command) -> Running {
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the binary");
        let (sender, lines) = mpsc::channel();
        forward_lines(child.stdout.take().unwrap(), Stream::Stdout, sender.clone());
        forward_lines(child.stderr.take().unwrap(), Stream::Stderr, sender);
        Running {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// Returns the first line on `stream` that contains `needle`, or `None` when the child
    /// closes its output or [`TIMEOUT`] passes first.
    fn wait_for_line(&mut self, stream: Stream, needle: &str) -> Option<String> {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok((from, line)) => {
                    self.seen.push((from, line.clone()));
                    if from == stream && line.contains(needle) {
                        return Some(line);
                    }
                }
                Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => return None,
            }
        }
    }

    /// Collects the lines that arrived since the last call, without waiting.
    fn drain_lines(&mut self) {
        while let Ok(line) = self.lines.try_recv() {
            self.seen.push(line);
        }
    }

    fn output(&mut self) -> String {
        self.drain_lines();
        self.seen
            .iter()
            .map(|(stream, line)| format!("{stream:?}: {line}"))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Sends SIGTERM through the `kill` command, which keeps the tests free of `unsafe`.
    fn terminate(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -TERM failed: {status}");
    }

    /// Waits up to [`TIMEOUT`] for the child to exit.
    fn wait(&mut self) -> Option<ExitStatus> {
        wait_bounded(&mut self.child, TIMEOUT)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn forward_lines(
    stream: impl Read + Send + 'static,
    from: Stream,
    sender: mpsc::Sender<(Stream, String)>,
) {
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines() {
            let Ok(line) = line else { break };
            if sender.send((from, line)).is_err() {
                break;
            }
        }
    });
}

/// Returns a loopback port that was free a moment ago. Another process may take it before
/// the caller binds it, so callers retry on a collision.
fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
    listener.local_addr().unwrap().port()
}

// ---------------------------------------------------------------------------------------
// Files
// ---------------------------------------------------------------------------------------

/// A temporary directory with a secret file.
struct Workspace {
    dir: tempfile::TempDir,
}

impl Workspace {
    fn new() -> Workspace {
        let workspace = Workspace {
            dir: tempfile::tempdir().expect("create a temporary directory"),
        };
        workspace.write("secret", SECRET.as_bytes());
        workspace
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn write(&self, name: &str, contents: &[u8]) -> PathBuf {
        let path = self.path(name);
        std::fs::write(&path, contents).expect("write a test file");
        path
    }

    /// Writes a valid configuration with `scopes`, listening on `listen`. `extra` is
    /// appended at the end of the file.
    fn config(&self, listen: &str, scopes: &[&str], extra: &str) -> PathBuf {
        let scopes: Vec<String> = scopes.iter().map(|scope| format!("{scope:?}")).collect();
        let text = format!(
            r#"[listen]
address = "{listen}"

[upstream]
url = "https://api.example.com/gateway/eu"

[key]
id = "key_cli"
secret_file = {secret}

[policy]
workspace = "ws_cli"
scopes = [{scopes}]
{extra}
"#,
            secret = toml_path(&self.path("secret")),
            scopes = scopes.join(", "),
        );
        self.write("config.toml", text.as_bytes())
    }
}

fn toml_path(path: &Path) -> String {
    format!("{:?}", path.to_str().expect("temporary paths are UTF-8"))
}

fn path_arg(path: &Path) -> &str {
    path.to_str().expect("temporary paths are UTF-8")
}

// ---------------------------------------------------------------------------------------
// HTTP over a raw TCP stream
// ---------------------------------------------------------------------------------------

struct HttpResponse {
    status: u16,
    /// Header names in lower case.
    headers: HashMap<String, String>,
    body: Vec<u8>,
}

impl HttpResponse {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(String::as_str)
    }

    fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|error| panic!("body is not JSON ({error}): {}", self.body_text()))
    }
}

/// Sends one HTTP/1.1 request to `address` (host:port) and reads the whole response.
fn http_request(
    address: &str,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<HttpResponse> {
    let mut stream = TcpStream::connect(address)?;
    stream.set_read_timeout(Some(TIMEOUT))?;
    stream.set_write_timeout(Some(TIMEOUT))?;

    let mut request =
        format!("{method} {target} HTTP/1.1\r\nhost: {address}\r\nconnection: close\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    if !body.is_empty() || method == "POST" {
        request.push_str(&format!("content-length: {}\r\n", body.len()));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes())?;
    stream.write_all(body)?;

    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    parse_response(&raw)
}

fn parse_response(raw: &[u8]) -> std::io::Result<HttpResponse> {
    let invalid =
        |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_owned());
    let end = raw
        .windows(4)
        .position(|window| window == b"\r\n\r\n")
        .ok_or_else(|| invalid("no end of headers"))?;
    let head = std::str::from_utf8(&raw[..end]).map_err(|_| invalid("headers are not UTF-8"))?;
    let mut lines = head.split("\r\n");

    let status_line = lines.next().ok_or_else(|| invalid("no status line"))?;
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| invalid("invalid status line"))?;
    let mut headers = HashMap::new();
    for line in lines {
        if let Some((name, value)) = line.split_once(':') {
            headers.insert(name.trim().to_ascii_lowercase(), value.trim().to_owned());
        }
    }

    let rest = &raw[end + 4..];
    let body = if headers
        .get("transfer-encoding")
        .is_some_and(|value| value.contains("chunked"))
    {
        decode_chunked(rest).ok_or_else(|| invalid("invalid chunked body"))?
    } else if let Some(length) = headers.get("content-length") {
        let length: usize = length
            .parse()
            .map_err(|_| invalid("invalid content-length"))?;
        rest.get(..length)
            .ok_or_else(|| invalid("truncated body"))?
            .to_vec()
    } else {
        rest.to_vec()
    };
    Ok(HttpResponse {
        status,
        headers,
        body,
    })
}

fn decode_chunked(mut rest: &[u8]) -> Option<Vec<u8>> {
    let mut body = Vec::new();
    // Each round consumes one chunk, so the loop ends within rest.len() rounds.
    for _ in 0..=rest.len() {
        let line_end = rest.windows(2).position(|window| window == b"\r\n")?;
        let size_text = std::str::from_utf8(&rest[..line_end]).ok()?;
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        rest = &rest[line_end + 2..];
        if size == 0 {
            return Some(body);
        }
        body.extend_from_slice(rest.get(..size)?);
        rest = rest.get(size + 2..)?;
    }
    None
}

/// Sends GET requests to `address` until one gets a response, for at most [`TIMEOUT`].
fn poll_until_answering(address: &str, target: &str) -> HttpResponse {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        match http_request(address, "GET", target, &[], b"") {
            Ok(response) => return response,
            Err(error) if Instant::now() >= deadline => {
                panic!("{address} did not answer GET {target} within {TIMEOUT:?}: {error}")
            }
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

// ---------------------------------------------------------------------------------------
// Help
// ---------------------------------------------------------------------------------------

/// Returns the description of `flag` in `help`: the text after the flag and its value
/// name on the same line, or the next line when clap puts it there.
fn option_description(help: &str, flag: &str) -> Option<String> {
    let lines: Vec<&str> = help.lines().collect();
    let index = lines.iter().position(|line| {
        line.trim_start().starts_with('-') && line.split([' ', ',']).any(|token| token == flag)
    })?;
    let line = lines[index];
    let after_flag = &line[line.find(flag)? + flag.len()..];
    let after_value = match after_flag.trim_start().strip_prefix('<') {
        Some(value) => &value[value.find('>')? + 1..],
        None => after_flag,
    };
    let description = after_value.trim();
    if !description.is_empty() {
        return Some(description.to_owned());
    }
    lines
        .get(index + 1)
        .map(|next| next.trim().to_owned())
        .filter(|next| !next.is_empty() && !next.starts_with('-'))
}

/// Every option each command takes, besides `--help`.
const COMMAND_OPTIONS: [(&str, &[&str]); 6] = [
    ("run", &["--config"]),
    ("demo", &["--listen", "--scope", "--workspace"]),
    ("check-config", &["--config"]),
    (
        "sign",
        &[
            "--key-id",
            "--secret-file",
            "--secret-env",
            "--method",
            "--path",
            "--body-file",
            "--timestamp",
            "--nonce",
            "--encoding",
            "--show-canonical",
        ],
    ),
    ("routes", &["--config"]),
    (
        "stand-in",
        &[
            "--listen",
            "--workspace",
            "--key-id",
            "--secret-file",
            "--secret-env",
            "--path-prefix",
            "--encoding",
        ],
    ),
];

/// Asserts that `help` offers no way to put a secret itself on the command line: every
/// `--secret…` option names a file or a variable, and no value placeholder is a secret.
fn assert_no_secret_argument(context: &str, help: &str) {
    for (index, _) in help.match_indices("--secret") {
        let rest = &help[index + "--secret".len()..];
        assert!(
            rest.starts_with("-file") || rest.starts_with("-env"),
            "{context}: an option passes a secret itself: {}",
            &help[index..help.len().min(index + 40)]
        );
    }
    for placeholder in [
        "<SECRET>",
        "<KEY_SECRET>",
        "<SECRET_KEY>",
        "--key-secret",
        "--hmac-key",
    ] {
        assert!(
            !help.contains(placeholder),
            "{context}: help offers {placeholder}"
        );
    }
}

#[test]
fn help_describes_commands() {
    let finished = run_args(&["--help"]);

    assert_eq!(finished.code(), Some(0), "{}", finished.describe());
    for (name, _) in COMMAND_OPTIONS {
        let line = finished
            .stdout
            .lines()
            .find(|line| line.trim_start().starts_with(&format!("{name} ")))
            .unwrap_or_else(|| panic!("--help does not list {name}:\n{}", finished.stdout));
        assert!(
            line.trim_start()[name.len()..].trim().len() > 10,
            "{name} has no description: {line}"
        );
    }
    assert!(
        finished.stdout.contains("AGENT_ACCESS_PROXY__"),
        "{}",
        finished.stdout
    );
    assert_no_secret_argument("--help", &finished.stdout);
}

#[test]
fn subcommand_help_describes_options() {
    for (name, options) in COMMAND_OPTIONS {
        let finished = run_args(&[name, "--help"]);

        assert_eq!(finished.code(), Some(0), "{name}: {}", finished.describe());
        for option in options {
            let description = option_description(&finished.stdout, option);
            assert!(
                description.is_some(),
                "{name} --help does not describe {option}:\n{}",
                finished.stdout
            );
        }
        assert_no_secret_argument(name, &finished.stdout);
    }
}

#[test]
fn subcommand_help_lists_only_known_options() {
    // A new option must be added to COMMAND_OPTIONS, so that the checks above cover it.
    for (name, options) in COMMAND_OPTIONS {
        let finished = run_args(&[name, "--help"]);

        for line in finished.stdout.lines() {
            let Some(flag) = line
                .split([' ', ','])
                .find(|token| token.starts_with("--") && token.len() > 2)
            else {
                continue;
            };
            if !line.trim_start().starts_with('-') || flag == "--help" {
                continue;
            }
            assert!(
                options.contains(&flag),
                "{name} --help lists {flag}, which this test does not know"
            );
        }
    }
}

// ---------------------------------------------------------------------------------------
// check-config
// ---------------------------------------------------------------------------------------

#[test]
fn check_config_valid_exits_zero() {
    let workspace = Workspace::new();
    let config = workspace.config("127.0.0.1:8080", &["env:read", "events:write"], "");

    let finished = run_args(&["check-config", "--config", path_arg(&config)]);

    assert_eq!(finished.code(), Some(0), "{}", finished.describe());
    let stdout = &finished.stdout;
    assert!(
        stdout.contains("url = \"https://api.example.com/gateway/eu\""),
        "{stdout}"
    );
    assert!(stdout.contains("id = \"key_cli\""), "{stdout}");
    assert!(stdout.contains("workspace = \"ws_cli\""), "{stdout}");
    assert!(stdout.contains("\"env:read\""), "{stdout}");
    assert!(stdout.contains("\"events:write\""), "{stdout}");
    assert!(stdout.contains("max_body_bytes = 16777216"), "{stdout}");
}

#[test]
fn check_config_redacts_secret() {
    let workspace = Workspace::new();
    let config = workspace.config("127.0.0.1:8080", &["env:read"], "");

    let finished = run_args(&["check-config", "--config", path_arg(&config)]);

    assert_eq!(finished.code(), Some(0), "{}", finished.describe());
    assert!(
        finished.stdout.contains("[redacted]"),
        "{}",
        finished.stdout
    );
    assert!(!finished.stdout.contains(SECRET), "stdout leaks the secret");
    assert!(!finished.stderr.contains(SECRET), "stderr leaks the secret");
}

#[test]
fn check_config_shows_default_listen() {
    // The effective configuration includes defaults, as it does for the timeouts and the
    // body limit, so an operator sees where the proxy will listen.
    let workspace = Workspace::new();
    let config = workspace.config("127.0.0.1:8080", &["env:read"], "");
    let text = std::fs::read_to_string(&config).unwrap();
    let without_listen = text.replace("[listen]\naddress = \"127.0.0.1:8080\"\n", "");
    std::fs::write(&config, without_listen).unwrap();

    let finished = run_args(&["check-config", "--config", path_arg(&config)]);

    assert_eq!(finished.code(), Some(0), "{}", finished.describe());
    assert!(
        finished.stdout.contains("127.0.0.1:8080"),
        "the default listen address is missing:\n{}",
        finished.stdout
    );
}

#[test]
fn check_config_applies_env_override() {
    let workspace = Workspace::new();
    let config = workspace.config("127.0.0.1:8080", &["env:read"], "");
    let mut check = command(&["check-config", "--config", path_arg(&config)]);
    check.env(
        "AGENT_ACCESS_PROXY__POLICY__SCOPES",
        "env:read,artifacts:write",
    );

    let finished = run_bounded(check);

    assert_eq!(finished.code(), Some(0), "{}", finished.describe());
    assert!(
        finished.stdout.contains("\"artifacts:write\""),
        "{}",
        finished.stdout
    );
}

#[test]
fn check_config_invalid_exits_64() {
    let workspace = Workspace::new();
    let config = workspace.config("127.0.0.1:8080", &["env:read", "env:write"], "");

    let finished = run_args(&["check-config", "--config", path_arg(&config)]);

    assert_eq!(finished.code(), Some(EXIT_USAGE), "{}", finished.describe());
    assert!(
        finished.stderr.contains("policy.scopes"),
        "{}",
        finished.stderr
    );
    assert!(
        finished.stderr.contains("'env:write'"),
        "{}",
        finished.stderr
    );
    assert!(finished.stdout.is_empty(), "{}", finished.stdout);
}

#[test]
fn check_config_unknown_key_exits_64() {
    let workspace = Workspace::new();
    let config = workspace.config("127.0.0.1:8080", &["env:read"], "max_bodyy_bytes = 1");

    let finished = run_args(&["check-config", "--config", path_arg(&config)]);

    assert_eq!(finished.code(), Some(EXIT_USAGE), "{}", finished.describe());
    assert!(
        finished.stderr.contains("max_bodyy_bytes"),
        "{}",
        finished.stderr
    );
}

#[test]
fn check_config_secret_in_file_not_echoed() {
    let workspace = Workspace::new();
    let config = workspace.config("127.0.0.1:8080", &["env:read"], "");
    let text = std::fs::read_to_string(&config).unwrap();
    let with_secret = text.replace("[key]\n", &format!("[key]\nsecret = \"{SECRET}\"\n"));
    std::fs::write(&config, with_secret).unwrap();

    let finished = run_args(&["check-config", "--config", path_arg(&config)]);

    assert_eq!(finished.code(), Some(EXIT_USAGE), "{}", finished.describe());
    assert!(
        finished.stderr.contains("key.secret"),
        "{}",
        finished.stderr
    );
    assert!(!finished.stderr.contains(SECRET), "stderr leaks the secret");
    assert!(!finished.stdout.contains(SECRET), "stdout leaks the secret");
}

#[test]
fn check_config_missing_file_exits_64() {
    let workspace = Workspace::new();
    let missing = workspace.path("missing.toml");

    let finished = run_args(&["check-config", "--config", path_arg(&missing)]);

    assert_eq!(finished.code(), Some(EXIT_USAGE), "{}", finished.describe());
    assert!(
        finished.stderr.contains("missing.toml"),
        "{}",
        finished.stderr
    );
}

// ---------------------------------------------------------------------------------------
// run
// ---------------------------------------------------------------------------------------

/// Turns off the admin listener, whose fixed default port would make parallel `run` tests
/// collide with each other.
const ADMIN_DISABLED: &str = "\n[admin]\nenabled = false\n";

#[test]
fn run_listen_address_taken_exits_64() {
    let workspace = Workspace::new();
    let occupied = TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
    let address = occupied.local_addr().unwrap().to_string();
    let config = workspace.config(&address, &["env:read"], ADMIN_DISABLED);

    let finished = run_args(&["run", "--config", path_arg(&config)]);

    assert_eq!(finished.code(), Some(EXIT_USAGE), "{}", finished.describe());
    assert!(
        finished.stderr.contains("listen.address"),
        "{}",
        finished.stderr
    );
    assert!(finished.stderr.contains(&address), "{}", finished.stderr);
    assert!(!finished.stderr.contains(SECRET), "stderr leaks the secret");
    drop(occupied);
}

#[test]
fn run_log_without_ansi_when_piped() {
    // Log collectors read the proxy's standard error from a pipe, so colour escapes would
    // end up in every stored log line.
    let workspace = Workspace::new();
    let occupied = TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
    let address = occupied.local_addr().unwrap().to_string();
    let config = workspace.config(&address, &["env:read"], ADMIN_DISABLED);

    let finished = run_args(&["run", "--config", path_arg(&config)]);

    assert_eq!(finished.code(), Some(EXIT_USAGE), "{}", finished.describe());
    assert!(
        !finished.stderr.contains('\u{1b}'),
        "the log contains ANSI escapes: {:?}",
        finished.stderr
    );
    drop(occupied);
}

#[test]
fn run_starts_and_stops_on_sigterm() {
    let workspace = Workspace::new();
    let build = |listen: &str| {
        let config = workspace.config(listen, &["env:read"], ADMIN_DISABLED);
        command(&["run", "--config", path_arg(&config)])
    };

    let (mut proxy, start_line, listen) =
        start_server(build, Stream::Stderr, "agent-access-proxy started");

    assert!(start_line.contains(&listen), "{start_line}");
    assert!(start_line.contains("[redacted]"), "{start_line}");
    assert!(
        !start_line.contains(SECRET),
        "the start log leaks the secret"
    );
    proxy.terminate();
    let status = proxy.wait();
    let output = proxy.output();
    assert!(!output.contains(SECRET), "the output leaks the secret");
    assert!(
        status.is_some(),
        "the proxy did not exit within {TIMEOUT:?}"
    );
    assert_eq!(status.unwrap().code(), Some(0), "{output}");
}

#[test]
fn run_invalid_config_exits_64() {
    let workspace = Workspace::new();
    let config = workspace.config("127.0.0.1:8080", &[], "");

    let finished = run_args(&["run", "--config", path_arg(&config)]);

    assert_eq!(finished.code(), Some(EXIT_USAGE), "{}", finished.describe());
    assert!(
        finished.stderr.contains("policy.scopes"),
        "{}",
        finished.stderr
    );
}

// ---------------------------------------------------------------------------------------
// sign
// ---------------------------------------------------------------------------------------

/// One vector of `tests/fixtures/signing-vectors.json`.
struct Vector {
    name: String,
    secret: String,
    method: String,
    path_with_query: String,
    timestamp: u64,
    nonce: String,
    body: String,
    canonical_string: String,
    signature_hex: String,
}

fn signing_vectors() -> Vec<Vector> {
    let file: serde_json::Value =
        serde_json::from_str(include_str!("fixtures/signing-vectors.json"))
            .expect("vectors are JSON");
    let text = |vector: &serde_json::Value, field: &str| {
        vector[field]
            .as_str()
            .unwrap_or_else(|| panic!("vector field {field} is not a string"))
            .to_owned()
    };
    file["vectors"]
        .as_array()
        .expect("a vectors array")
        .iter()
        .map(|vector| Vector {
            name: text(vector, "name"),
            secret: text(vector, "secret"),
            method: text(vector, "method"),
            path_with_query: text(vector, "path_with_query"),
            timestamp: vector["timestamp"].as_u64().expect("a numeric timestamp"),
            nonce: text(vector, "nonce"),
            body: text(vector, "body"),
            canonical_string: text(vector, "canonical_string"),
            signature_hex: text(vector, "signature_hex"),
        })
        .collect()
}

/// Runs `sign` for `vector` with the given extra arguments and returns the header lines as
/// a map from header name to value, plus the whole standard output.
fn sign_vector(
    workspace: &Workspace,
    vector: &Vector,
    extra: &[&str],
) -> (HashMap<String, String>, String) {
    let secret = workspace.write(&format!("{}.secret", vector.name), vector.secret.as_bytes());
    let body = workspace.write(&format!("{}.body", vector.name), vector.body.as_bytes());
    let timestamp = vector.timestamp.to_string();
    let mut args = vec![
        "sign",
        "--key-id",
        "k",
        "--secret-file",
        path_arg(&secret),
        "--method",
        &vector.method,
        "--path",
        &vector.path_with_query,
        "--body-file",
        path_arg(&body),
        "--timestamp",
        &timestamp,
        "--nonce",
        &vector.nonce,
    ];
    args.extend_from_slice(extra);

    let finished = run_args(&args);

    assert_eq!(
        finished.code(),
        Some(0),
        "{}: {}",
        vector.name,
        finished.describe()
    );
    let headers = finished
        .stdout
        .lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| line.split_once(": "))
        .map(|(name, value)| (name.to_owned(), value.to_owned()))
        .collect();
    (headers, finished.stdout)
}

#[test]
fn sign_reproduces_vectors() {
    let workspace = Workspace::new();
    let vectors = signing_vectors();
    assert_eq!(vectors.len(), 5);

    for vector in &vectors {
        let (headers, stdout) = sign_vector(&workspace, vector, &[]);

        let signature_line = format!("x-integration-signature: {}", vector.signature_hex);
        assert!(
            stdout.lines().any(|line| line == signature_line),
            "{}: expected the line '{signature_line}' in:\n{stdout}",
            vector.name
        );
        assert_eq!(
            headers.get("x-integration-key-id").map(String::as_str),
            Some("k")
        );
        assert_eq!(
            headers.get("x-integration-timestamp"),
            Some(&vector.timestamp.to_string()),
            "{}",
            vector.name
        );
        assert_eq!(
            headers.get("x-integration-nonce"),
            Some(&vector.nonce),
            "{}",
            vector.name
        );
        assert_eq!(headers.len(), 4, "{}: {stdout}", vector.name);
        assert!(
            !stdout.contains(&vector.secret),
            "{}: the output contains the secret",
            vector.name
        );
    }
}

#[test]
fn sign_base64_encodes_same_bytes() {
    let workspace = Workspace::new();

    for vector in &signing_vectors() {
        let raw = hex::decode(&vector.signature_hex).expect("hex signature");
        let expected = base64::engine::general_purpose::STANDARD.encode(&raw);

        let (headers, stdout) = sign_vector(&workspace, vector, &["--encoding", "base64"]);

        assert_eq!(raw.len(), 32);
        assert_eq!(
            headers.get("x-integration-signature"),
            Some(&expected),
            "{}: {stdout}",
            vector.name
        );
    }
}

#[test]
fn sign_shows_canonical_string() {
    let workspace = Workspace::new();

    for vector in &signing_vectors() {
        let (_, stdout) = sign_vector(&workspace, vector, &["--show-canonical"]);

        let canonical_lines: Vec<&str> = stdout
            .lines()
            .filter_map(|line| line.strip_prefix("#   "))
            .collect();
        let expected: Vec<&str> = vector.canonical_string.split('\n').collect();
        assert_eq!(canonical_lines, expected, "{}", vector.name);
    }
}

#[test]
fn sign_reads_secret_env() {
    let workspace = Workspace::new();
    let vector = &signing_vectors()[0];
    let body = workspace.write("body", vector.body.as_bytes());
    let timestamp = vector.timestamp.to_string();
    // The variable is set on the child only, so the test process environment stays as is.
    let mut sign = command(&[
        "sign",
        "--key-id",
        "k",
        "--secret-env",
        "AGENT_ACCESS_PROXY_TEST_SECRET",
        "--method",
        &vector.method,
        "--path",
        &vector.path_with_query,
        "--body-file",
        path_arg(&body),
        "--timestamp",
        &timestamp,
        "--nonce",
        &vector.nonce,
    ]);
    sign.env("AGENT_ACCESS_PROXY_TEST_SECRET", &vector.secret);

    let finished = run_bounded(sign);

    assert_eq!(finished.code(), Some(0), "{}", finished.describe());
    let signature_line = format!("x-integration-signature: {}", vector.signature_hex);
    assert!(
        finished.stdout.lines().any(|line| line == signature_line),
        "{}",
        finished.stdout
    );
}

#[test]
fn sign_without_secret_source_exits_64() {
    let finished = run_args(&[
        "sign",
        "--key-id",
        "k",
        "--path",
        "/agent-api/v1/workspaces/ws_demo/environment",
    ]);

    assert!(finished.stdout.is_empty(), "{}", finished.stdout);
    assert!(
        finished.stderr.contains("--secret-file"),
        "{}",
        finished.stderr
    );
    assert!(
        finished.stderr.contains("--secret-env"),
        "{}",
        finished.stderr
    );
    assert!(finished.stderr.contains("Usage:"), "{}", finished.stderr);
    assert_eq!(finished.code(), Some(EXIT_USAGE), "{}", finished.describe());
}

#[test]
fn sign_missing_secret_file_exits_64() {
    let workspace = Workspace::new();
    let missing = workspace.path("missing-secret");

    let finished = run_args(&[
        "sign",
        "--key-id",
        "k",
        "--secret-file",
        path_arg(&missing),
        "--path",
        "/agent-api/v1/workspaces/ws_demo/environment",
    ]);

    assert_eq!(finished.code(), Some(EXIT_USAGE), "{}", finished.describe());
    assert!(finished.stderr.contains("secret"), "{}", finished.stderr);
    assert!(finished.stdout.is_empty(), "{}", finished.stdout);
}

// ---------------------------------------------------------------------------------------
// routes
// ---------------------------------------------------------------------------------------

#[test]
fn routes_lists_built_in_routes() {
    let workspace = Workspace::new();
    let config = workspace.config("127.0.0.1:8080", &["env:read", "events:write"], "");

    let finished = run_args(&["routes", "--config", path_arg(&config)]);

    assert_eq!(finished.code(), Some(0), "{}", finished.describe());
    assert!(finished.stdout.contains("ws_cli"), "{}", finished.stdout);
    for (method, template, scope) in BUILT_IN_ROUTES {
        let line = finished
            .stdout
            .lines()
            .find(|line| {
                let columns: Vec<&str> = line.split_whitespace().collect();
                columns.first() == Some(&method) && columns.get(1) == Some(&template)
            })
            .unwrap_or_else(|| panic!("{method} {template} is missing:\n{}", finished.stdout));
        let columns: Vec<&str> = line.split_whitespace().collect();
        let expected_allowed = if scope == "env:read" || scope == "events:write" {
            "yes"
        } else {
            "no"
        };

        assert_eq!(columns.get(2), Some(&scope), "{line}");
        assert_eq!(columns.last(), Some(&expected_allowed), "{line}");
    }
}

#[test]
fn routes_lists_extra_route() {
    let workspace = Workspace::new();
    let extra = "\n[[policy.extra_routes]]\nmethod = \"GET\"\npath = \"/agent-api/v1/workspaces/{ws}/runs/{run}\"\nscope = \"runs:read\"\n";
    let config = workspace.config("127.0.0.1:8080", &["env:read", "runs:read"], extra);

    let finished = run_args(&["routes", "--config", path_arg(&config)]);

    assert_eq!(finished.code(), Some(0), "{}", finished.describe());
    let line = finished
        .stdout
        .lines()
        .find(|line| line.contains("/runs/{run}"))
        .unwrap_or_else(|| panic!("the extra route is missing:\n{}", finished.stdout));
    let columns: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(
        columns,
        [
            "GET",
            "/agent-api/v1/workspaces/{ws}/runs/{run}",
            "runs:read",
            "yes"
        ]
    );
}

#[test]
fn routes_invalid_config_exits_64() {
    let workspace = Workspace::new();
    let config = workspace.config("127.0.0.1:8080", &["nope:nope"], "");

    let finished = run_args(&["routes", "--config", path_arg(&config)]);

    assert_eq!(finished.code(), Some(EXIT_USAGE), "{}", finished.describe());
    assert!(
        finished.stderr.contains("policy.scopes"),
        "{}",
        finished.stderr
    );
}

// ---------------------------------------------------------------------------------------
// stand-in and demo
// ---------------------------------------------------------------------------------------

/// How many times a server start is retried when its port was taken in the meantime.
const START_ATTEMPTS: usize = 5;

/// Starts the command that `build` returns for a free loopback address and waits for the
/// line on `stream` that contains `banner`. Returns the running child, that line and the
/// address.
fn start_server(
    build: impl Fn(&str) -> Command,
    stream: Stream,
    banner: &str,
) -> (Running, String, String) {
    let mut failures = Vec::new();
    for _ in 0..START_ATTEMPTS {
        let listen = format!("127.0.0.1:{}", free_port());
        let server = build(&listen);
        let description = format!("{server:?}");
        let mut running = Running::start(server);

        if let Some(line) = running.wait_for_line(stream, banner) {
            return (running, line, listen);
        }
        let status = running.wait();
        let output = running.output();
        if status.and_then(|status| status.code()) == Some(EXIT_USAGE) && output.contains("in use")
        {
            failures.push(format!("{listen} was taken"));
            continue;
        }
        panic!("{description} did not print '{banner}' (status {status:?}):\n{output}");
    }
    panic!("no free port after {START_ATTEMPTS} attempts: {failures:?}");
}

/// Builds a command for `args` plus `--listen address`.
fn with_listen<'a>(args: &'a [&'a str]) -> impl Fn(&str) -> Command + 'a {
    move |listen| {
        let mut all_args = args.to_vec();
        all_args.extend_from_slice(&["--listen", listen]);
        command(&all_args)
    }
}

/// Returns `host:port` from a line containing `http://host:port...`.
fn address_in(line: &str) -> String {
    let start = line.find("http://").expect("the line contains a URL") + "http://".len();
    line[start..]
        .split(|c: char| c == '/' || c.is_whitespace())
        .next()
        .expect("a host and port")
        .to_owned()
}

fn start_demo() -> (Running, String) {
    let (mut demo, line, _) =
        start_server(with_listen(&["demo"]), Stream::Stdout, "Agent base URL: ");
    let address = address_in(&line);
    let probe = poll_until_answering(&address, "/agent-api/v1/workspaces/ws_demo/environment");
    assert_eq!(
        probe.status,
        200,
        "{}\n{}",
        probe.body_text(),
        demo.output()
    );
    (demo, address)
}

#[test]
fn demo_serves_environment() {
    let (_demo, address) = start_demo();

    let response = http_request(
        &address,
        "GET",
        "/agent-api/v1/workspaces/ws_demo/environment",
        &[],
        b"",
    )
    .expect("request the environment");

    assert_eq!(response.status, 200, "{}", response.body_text());
    assert_eq!(response.header("content-type"), Some("application/json"));
    assert_eq!(response.json()["workspace"]["id"], "ws_demo");
}

#[test]
fn demo_denies_file_proposal() {
    let (_demo, address) = start_demo();

    let response = http_request(
        &address,
        "POST",
        "/agent-api/v1/workspaces/ws_demo/files/fn_memory/proposals",
        &[("content-type", "application/json")],
        br#"{"content":"new"}"#,
    )
    .expect("post a proposal");

    assert_eq!(response.status, 403, "{}", response.body_text());
    assert_eq!(
        response.header("x-agent-access-proxy-error"),
        Some("scope_not_allowed")
    );
    assert!(
        response.body_text().contains("files:propose"),
        "{}",
        response.body_text()
    );
    assert_eq!(response.json()["error"]["code"], "scope_not_allowed");
}

#[test]
fn demo_exits_zero_on_sigterm() {
    let (mut demo, _address) = start_demo();

    demo.terminate();
    let status = demo.wait();

    assert!(status.is_some(), "the demo did not exit within {TIMEOUT:?}");
    assert_eq!(status.unwrap().code(), Some(0), "{}", demo.output());
}

fn start_stand_in(workspace: &Workspace) -> (Running, String) {
    let secret = workspace.path("secret");
    let args = [
        "stand-in",
        "--key-id",
        "key_cli",
        "--secret-file",
        path_arg(&secret),
        "--workspace",
        "ws_cli",
    ];
    let (stand_in, line, _) = start_server(
        with_listen(&args),
        Stream::Stdout,
        "stand-in of the Agent Access API on ",
    );
    let address = address_in(&line);
    let probe = poll_until_answering(&address, "/_stand-in/state");
    assert_eq!(probe.status, 200, "{}", probe.body_text());
    (stand_in, address)
}

#[test]
fn stand_in_rejects_unsigned_request() {
    let workspace = Workspace::new();
    let (_stand_in, address) = start_stand_in(&workspace);

    let response = http_request(
        &address,
        "GET",
        "/agent-api/v1/workspaces/ws_cli/environment",
        &[],
        b"",
    )
    .expect("request the environment");

    assert_eq!(response.status, 401, "{}", response.body_text());
    assert!(
        response.json()["error"]["code"].is_string(),
        "{}",
        response.body_text()
    );
}

#[test]
fn stand_in_accepts_signed_request() {
    let workspace = Workspace::new();
    let (_stand_in, address) = start_stand_in(&workspace);
    let target = "/agent-api/v1/workspaces/ws_cli/environment";
    let secret = workspace.path("secret");

    // `sign` with the current time and a fresh nonce, as a client debugging its
    // signatures would run it.
    let signed = run_args(&[
        "sign",
        "--key-id",
        "key_cli",
        "--secret-file",
        path_arg(&secret),
        "--method",
        "GET",
        "--path",
        target,
    ]);
    assert_eq!(signed.code(), Some(0), "{}", signed.describe());
    let headers: Vec<(&str, &str)> = signed
        .stdout
        .lines()
        .filter_map(|line| line.split_once(": "))
        .collect();
    assert_eq!(headers.len(), 4, "{}", signed.stdout);

    let response = http_request(&address, "GET", target, &headers, b"").expect("request");

    assert_eq!(response.status, 200, "{}", response.body_text());
    assert_eq!(response.json()["workspace"]["id"], "ws_cli");
    assert_eq!(response.json()["key"]["id"], "key_cli");
}

#[test]
fn stand_in_exits_zero_on_sigterm() {
    let workspace = Workspace::new();
    let (mut stand_in, _address) = start_stand_in(&workspace);

    stand_in.terminate();
    let status = stand_in.wait();

    assert!(
        status.is_some(),
        "the stand-in did not exit within {TIMEOUT:?}"
    );
    assert_eq!(status.unwrap().code(), Some(0), "{}", stand_in.output());
}

#[test]
fn stand_in_listen_taken_exits_64() {
    let workspace = Workspace::new();
    let occupied = TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
    let address = occupied.local_addr().unwrap().to_string();
    let secret = workspace.path("secret");

    let finished = run_args(&[
        "stand-in",
        "--key-id",
        "key_cli",
        "--secret-file",
        path_arg(&secret),
        "--listen",
        &address,
    ]);

    assert_eq!(finished.code(), Some(EXIT_USAGE), "{}", finished.describe());
    assert!(finished.stderr.contains("--listen"), "{}", finished.stderr);
    assert!(finished.stderr.contains(&address), "{}", finished.stderr);
    drop(occupied);
}
