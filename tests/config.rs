//! Loading and validating real configuration files, with the environment overrides passed
//! as a map so that no test changes the process environment.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use agent_access_proxy::config::{self, ConfigError, ListenAddress, Settings};
use agent_access_proxy::signing::SignatureEncoding;
use http::Method;

/// A secret distinctive enough that finding it in a message cannot be a coincidence.
const SECRET: &str = "zq7-SECRET-marker-4f9c1e-do-not-print";

/// A temporary directory with a secret file and a configuration file.
struct Fixture {
    dir: tempfile::TempDir,
    /// Numbers the configuration files, so that a test can keep several side by side.
    configs_written: std::cell::Cell<usize>,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().expect("create a temporary directory");
        let fixture = Fixture {
            dir,
            configs_written: std::cell::Cell::new(0),
        };
        fixture.write("secret", SECRET);
        fixture
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn write(&self, name: &str, contents: &str) -> PathBuf {
        let path = self.path(name);
        std::fs::write(&path, contents).expect("write a test file");
        path
    }

    fn secret_path(&self) -> PathBuf {
        self.path("secret")
    }

    /// Writes a new configuration file, valid unless the additions break it. The `[key]`
    /// table ends with `key_extra` and the file ends with `tail`.
    fn config_with(&self, key_extra: &str, tail: &str) -> PathBuf {
        let text = format!(
            r#"
[upstream]
url = "https://api.example.com"

[key]
id = "key_test"
secret_file = {secret}
{key_extra}

[policy]
workspace = "ws_test"
scopes = ["env:read"]
{tail}
"#,
            secret = toml_string(&self.secret_path()),
        );
        let number = self.configs_written.get() + 1;
        self.configs_written.set(number);
        self.write(&format!("config-{number}.toml"), &text)
    }

    fn minimal_config(&self) -> PathBuf {
        self.config_with("", "")
    }
}

fn toml_string(path: &Path) -> String {
    format!("{:?}", path.to_str().expect("temporary paths are UTF-8"))
}

fn no_env() -> Option<HashMap<String, String>> {
    Some(HashMap::new())
}

fn env(pairs: &[(&str, &str)]) -> Option<HashMap<String, String>> {
    Some(
        pairs
            .iter()
            .map(|(name, value)| (name.to_string(), value.to_string()))
            .collect(),
    )
}

/// Loads `path` with the environment replaced by `environment` and validates the result.
fn load(
    path: &Path,
    environment: Option<HashMap<String, String>>,
) -> Result<Settings, ConfigError> {
    let file = config::load_file_with_env(Some(path), environment)?;
    config::validate(file)
}

/// Loads a configuration that must be invalid and returns the error's display text, after
/// checking that the text does not contain the secret.
fn load_error(path: &Path, environment: Option<HashMap<String, String>>) -> String {
    let error = match load(path, environment) {
        Ok(_) => panic!("expected {} to be rejected", path.display()),
        Err(error) => error,
    };
    let message = error.to_string();
    assert!(
        !message.contains(SECRET),
        "the error message contains the secret: {message}"
    );
    message
}

/// Returns the problems of a validation error as `(key, message)` pairs.
fn problems(error: ConfigError) -> Vec<(String, String)> {
    match error {
        ConfigError::Invalid(problems) => problems
            .into_iter()
            .map(|problem| (problem.key.to_owned(), problem.message))
            .collect(),
        ConfigError::Load(error) => {
            panic!("expected validation problems, got a load error: {error}")
        }
    }
}

fn scope_names(settings: &Settings) -> Vec<String> {
    settings
        .policy
        .scopes
        .iter()
        .map(|scope| scope.as_str().to_owned())
        .collect()
}

#[test]
fn minimal_config_loads() {
    let fixture = Fixture::new();

    let settings = load(&fixture.minimal_config(), no_env()).expect("a minimal config loads");

    assert_eq!(settings.key.id, "key_test");
    assert_eq!(settings.key.secret.expose(), SECRET.as_bytes());
    assert_eq!(settings.policy.workspace, "ws_test");
    assert_eq!(scope_names(&settings), ["env:read"]);
    assert_eq!(settings.upstream.scheme.as_str(), "https");
    assert_eq!(settings.upstream.authority.as_str(), "api.example.com");
    assert_eq!(settings.upstream.path_prefix, "");
    assert!(settings.warnings.is_empty(), "{:?}", settings.warnings);
}

#[test]
fn minimal_config_defaults() {
    let fixture = Fixture::new();

    let settings = load(&fixture.minimal_config(), no_env()).expect("a minimal config loads");

    let default_listen: SocketAddr = "127.0.0.1:8080".parse().unwrap();
    assert_eq!(settings.listen, ListenAddress::Tcp(default_listen));
    assert_eq!(settings.max_body_bytes, 16 * 1024 * 1024);
    assert_eq!(settings.signature_encoding, SignatureEncoding::Hex);
    assert_eq!(settings.upstream.connect_timeout.as_secs_f64(), 5.0);
    assert_eq!(settings.upstream.response_timeout.as_secs_f64(), 30.0);
    assert_eq!(settings.log.level, "info");
}

#[test]
fn env_overrides_upstream_url() {
    let fixture = Fixture::new();
    let environment = env(&[(
        "AGENT_ACCESS_PROXY__UPSTREAM__URL",
        "http://127.0.0.1:9000/gateway",
    )]);

    let settings = load(&fixture.minimal_config(), environment).expect("the override loads");

    assert_eq!(settings.upstream.scheme.as_str(), "http");
    assert_eq!(settings.upstream.authority.as_str(), "127.0.0.1:9000");
    assert_eq!(settings.upstream.path_prefix, "/gateway");
}

#[test]
fn env_overrides_scopes_list() {
    let fixture = Fixture::new();
    let environment = env(&[(
        "AGENT_ACCESS_PROXY__POLICY__SCOPES",
        "env:read,events:write",
    )]);

    let settings = load(&fixture.minimal_config(), environment).expect("the override loads");

    assert_eq!(scope_names(&settings), ["env:read", "events:write"]);
}

#[test]
fn env_overrides_secret_file() {
    let fixture = Fixture::new();
    let other = fixture.write("other-secret", "the-other-secret\n");
    let environment = env(&[(
        "AGENT_ACCESS_PROXY__KEY__SECRET_FILE",
        other.to_str().unwrap(),
    )]);

    let settings = load(&fixture.minimal_config(), environment).expect("the override loads");

    assert_eq!(settings.key.secret.expose(), b"the-other-secret");
    assert_eq!(
        settings.key_source.secret,
        config::SecretSource::File(other)
    );
}

#[test]
fn env_without_prefix_is_ignored() {
    let fixture = Fixture::new();
    // Only variables with the prefix are overrides, so other variables are not read as keys.
    let environment = env(&[
        ("UPSTREAM__URL", "ftp://ignored.example.com"),
        ("HOME", "/root"),
    ]);

    let settings = load(&fixture.minimal_config(), environment).expect("the config loads");

    assert_eq!(settings.upstream.authority.as_str(), "api.example.com");
}

#[test]
fn unknown_file_key_rejected() {
    let fixture = Fixture::new();
    let path = fixture.config_with("", "max_bodyy_bytes = 10");

    let message = load_error(&path, no_env());

    assert!(message.contains("max_bodyy_bytes"), "{message}");
}

#[test]
fn unknown_top_level_table_rejected() {
    let fixture = Fixture::new();
    let path = fixture.config_with("", "\n[upstreams]\nurl = \"https://x.example.com\"");

    let message = load_error(&path, no_env());

    assert!(message.contains("upstreams"), "{message}");
}

#[test]
fn unknown_env_key_rejected() {
    let fixture = Fixture::new();
    let environment = env(&[(
        "AGENT_ACCESS_PROXY__UPSTREAM__URLL",
        "https::/typo.example.com",
    )]);

    let message = load_error(&fixture.minimal_config(), environment);

    assert!(message.contains("urll"), "{message}");
}

#[test]
fn unknown_scope_rejected() {
    let fixture = Fixture::new();
    let environment = env(&[("AGENT_ACCESS_PROXY__POLICY__SCOPES", "env:read,env:write")]);

    let error = load(&fixture.minimal_config(), environment).unwrap_err();
    let found = problems(error);

    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].0, "policy.scopes");
    assert!(found[0].1.contains("'env:write'"), "{found:?}");
    assert!(
        found[0].1.contains("env:read, artifacts:write"),
        "{found:?}"
    );
}

#[test]
fn malformed_scope_rejected() {
    let fixture = Fixture::new();
    let environment = env(&[("AGENT_ACCESS_PROXY__POLICY__SCOPES", "Env:Read")]);

    let error = load(&fixture.minimal_config(), environment).unwrap_err();
    let found = problems(error);

    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].0, "policy.scopes");
    assert!(found[0].1.contains("'Env:Read'"), "{found:?}");
}

#[test]
fn empty_scope_list_rejected() {
    let fixture = Fixture::new();
    let path = fixture.write(
        "config.toml",
        &format!(
            "[upstream]\nurl = \"https://api.example.com\"\n\n[key]\nid = \"key_test\"\nsecret_file = {}\n\n[policy]\nworkspace = \"ws_test\"\nscopes = []\n",
            toml_string(&fixture.secret_path())
        ),
    );

    let error = load(&path, no_env()).unwrap_err();
    let found = problems(error);

    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].0, "policy.scopes");
    assert!(found[0].1.contains("empty"), "{found:?}");
}

#[test]
fn scope_alias_normalised_with_warning() {
    let fixture = Fixture::new();
    let environment = env(&[(
        "AGENT_ACCESS_PROXY__POLICY__SCOPES",
        "env:read,events.write",
    )]);

    let settings = load(&fixture.minimal_config(), environment).expect("the alias is accepted");

    assert_eq!(scope_names(&settings), ["env:read", "events:write"]);
    assert_eq!(settings.warnings.len(), 1, "{:?}", settings.warnings);
    assert!(
        settings.warnings[0].contains("'events.write'"),
        "{:?}",
        settings.warnings
    );
    assert!(
        settings.warnings[0].contains("'events:write'"),
        "{:?}",
        settings.warnings
    );
}

/// Checks that `url` is rejected with a message that names the key, the value and the fix.
fn assert_url_rejected(url: &str, reason: &str) {
    let fixture = Fixture::new();
    let environment = env(&[("AGENT_ACCESS_PROXY__UPSTREAM__URL", url)]);

    let error = load(&fixture.minimal_config(), environment).unwrap_err();
    let found = problems(error);

    assert_eq!(found.len(), 1, "{url}: {found:?}");
    let (key, message) = &found[0];
    assert_eq!(key, "upstream.url", "{url}: {message}");
    assert!(
        message.contains(url),
        "{url}: the message lacks the value: {message}"
    );
    assert!(
        message.contains(reason),
        "{url}: expected '{reason}' in: {message}"
    );
    assert!(
        message.contains("https://api.example.com/gateway/eu"),
        "{url}: the message lacks the fix: {message}"
    );
}

#[test]
fn upstream_url_ftp_rejected() {
    assert_url_rejected("ftp://api.example.com", "http or https");
}

#[test]
fn upstream_url_without_scheme_rejected() {
    assert_url_rejected("api.example.com", "http or https");
}

#[test]
fn upstream_url_without_host_rejected() {
    assert_url_rejected("https:///gateway/eu", "not a valid URL");
}

#[test]
fn upstream_url_with_empty_host_rejected() {
    assert_url_rejected("https://:8443/gateway", "no host");
}

#[test]
fn upstream_url_user_info_rejected() {
    assert_url_rejected("https://agent:pw@api.example.com", "user information");
}

#[test]
fn upstream_url_query_rejected() {
    assert_url_rejected("https://api.example.com/?region=eu", "query");
}

#[test]
fn upstream_url_fragment_rejected() {
    assert_url_rejected("https://api.example.com/gateway#eu", "fragment");
}

#[test]
fn upstream_url_path_prefix_kept() {
    let fixture = Fixture::new();
    let environment = env(&[(
        "AGENT_ACCESS_PROXY__UPSTREAM__URL",
        "https://api.example.com/gateway/eu/",
    )]);

    let settings = load(&fixture.minimal_config(), environment).expect("a path prefix loads");

    assert_eq!(settings.upstream.authority.as_str(), "api.example.com");
    assert_eq!(settings.upstream.path_prefix, "/gateway/eu");
}

#[test]
fn secret_file_missing_rejected() {
    let fixture = Fixture::new();
    let missing = fixture.path("no-such-secret");
    let environment = env(&[(
        "AGENT_ACCESS_PROXY__KEY__SECRET_FILE",
        missing.to_str().unwrap(),
    )]);

    let error = load(&fixture.minimal_config(), environment).unwrap_err();
    let found = problems(error);

    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].0, "key.secret_file");
    assert!(found[0].1.contains(missing.to_str().unwrap()), "{found:?}");
}

#[test]
fn secret_file_unreadable_rejected() {
    let fixture = Fixture::new();
    // A directory cannot be read as a file even by root, unlike a file with mode 000.
    let directory = fixture.path("secret-dir");
    std::fs::create_dir(&directory).unwrap();
    let environment = env(&[(
        "AGENT_ACCESS_PROXY__KEY__SECRET_FILE",
        directory.to_str().unwrap(),
    )]);

    let error = load(&fixture.minimal_config(), environment).unwrap_err();
    let found = problems(error);

    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].0, "key.secret_file");
    assert!(
        found[0].1.contains(directory.to_str().unwrap()),
        "{found:?}"
    );
}

#[test]
fn secret_file_empty_rejected() {
    let fixture = Fixture::new();
    let empty = fixture.write("empty-secret", "");
    let environment = env(&[(
        "AGENT_ACCESS_PROXY__KEY__SECRET_FILE",
        empty.to_str().unwrap(),
    )]);

    let error = load(&fixture.minimal_config(), environment).unwrap_err();
    let found = problems(error);

    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].0, "key.secret_file");
    assert!(found[0].1.contains("empty"), "{found:?}");
}

#[test]
fn secret_file_only_newline_rejected() {
    let fixture = Fixture::new();
    let newline = fixture.write("newline-secret", "\n");
    let environment = env(&[(
        "AGENT_ACCESS_PROXY__KEY__SECRET_FILE",
        newline.to_str().unwrap(),
    )]);

    let error = load(&fixture.minimal_config(), environment).unwrap_err();
    let found = problems(error);

    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].0, "key.secret_file");
    assert!(found[0].1.contains("empty"), "{found:?}");
}

#[test]
fn secret_file_trailing_newline_stripped() {
    let fixture = Fixture::new();
    fixture.write("secret", &format!("{SECRET}\n"));

    let settings = load(&fixture.minimal_config(), no_env()).expect("the config loads");

    assert_eq!(settings.key.secret.expose(), SECRET.as_bytes());
}

#[test]
fn secret_file_crlf_stripped() {
    let fixture = Fixture::new();
    fixture.write("secret", &format!("{SECRET}\r\n"));

    let settings = load(&fixture.minimal_config(), no_env()).expect("the config loads");

    assert_eq!(settings.key.secret.expose(), SECRET.as_bytes());
}

#[test]
fn secret_env_unset_rejected() {
    let fixture = Fixture::new();
    // The secret file from the fixture must not count, so the config names only secret_env.
    let name = format!("AGENT_ACCESS_PROXY_TEST_UNSET_{}", std::process::id());
    assert!(std::env::var_os(&name).is_none(), "{name} is set");
    let path = fixture.write(
        "config.toml",
        &format!(
            "[upstream]\nurl = \"https://api.example.com\"\n\n[key]\nid = \"key_test\"\nsecret_env = \"{name}\"\n\n[policy]\nworkspace = \"ws_test\"\nscopes = [\"env:read\"]\n"
        ),
    );

    let error = load(&path, no_env()).unwrap_err();
    let found = problems(error);

    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].0, "key.secret_env");
    assert!(found[0].1.contains(&name), "{found:?}");
}

#[test]
fn secret_in_config_rejected() {
    let fixture = Fixture::new();
    let path = fixture.config_with(&format!("secret = \"{SECRET}\""), "");

    let message = load_error(&path, no_env());

    assert!(message.contains("key.secret"), "{message}");
    assert!(message.contains("key.secret_file"), "{message}");
}

#[test]
fn secret_in_env_override_rejected() {
    let fixture = Fixture::new();
    let environment = env(&[("AGENT_ACCESS_PROXY__KEY__SECRET", SECRET)]);

    let message = load_error(&fixture.minimal_config(), environment);

    assert!(message.contains("key.secret"), "{message}");
}

#[test]
fn secret_file_and_env_both_rejected() {
    let fixture = Fixture::new();
    let path = fixture.config_with("secret_env = \"AGENT_ACCESS_PROXY_TEST_SECRET\"", "");

    let message = load_error(&path, no_env());

    assert!(message.contains("key.secret_file"), "{message}");
    assert!(message.contains("key.secret_env"), "{message}");
}

/// One invalid configuration: a name for messages, the file and the environment overrides.
type LeakCase<'a> = (&'a str, PathBuf, Vec<(&'a str, &'a str)>);

#[test]
fn errors_never_contain_secret() {
    let fixture = Fixture::new();
    let newline_secret = fixture.write("newline-secret", &format!("{SECRET}\n"));
    let cases: Vec<LeakCase> = vec![
        (
            "secret in the file",
            fixture.config_with(&format!("secret = \"{SECRET}\""), ""),
            vec![],
        ),
        (
            "secret in a nested value",
            fixture.config_with(&format!("secret = {{ value = \"{SECRET}\" }}"), ""),
            vec![],
        ),
        (
            "secret in an env override",
            fixture.minimal_config(),
            vec![("AGENT_ACCESS_PROXY__KEY__SECRET", SECRET)],
        ),
        (
            "valid secret beside invalid keys",
            fixture.minimal_config(),
            vec![
                ("AGENT_ACCESS_PROXY__UPSTREAM__URL", "ftp://x"),
                ("AGENT_ACCESS_PROXY__POLICY__WORKSPACE", "ws/other"),
                ("AGENT_ACCESS_PROXY__KEY__ID", "key with spaces"),
            ],
        ),
        (
            "secret file with a newline beside an invalid key",
            fixture.minimal_config(),
            vec![
                (
                    "AGENT_ACCESS_PROXY__KEY__SECRET_FILE",
                    newline_secret.to_str().unwrap(),
                ),
                ("AGENT_ACCESS_PROXY__POLICY__SCOPES", "nope:nope"),
            ],
        ),
        (
            "secret beside an unknown env key",
            fixture.minimal_config(),
            vec![
                ("AGENT_ACCESS_PROXY__KEY__SECRET", SECRET),
                ("AGENT_ACCESS_PROXY__KEY__SECRETS", SECRET),
            ],
        ),
    ];

    for (name, path, pairs) in cases {
        let error = match load(&path, env(&pairs)) {
            Ok(_) => panic!("{name}: expected an error"),
            Err(error) => error,
        };
        let display = error.to_string();
        let debug = format!("{error:?}");
        assert!(
            !display.contains(SECRET),
            "{name}: Display leaks: {display}"
        );
        assert!(!debug.contains(SECRET), "{name}: Debug leaks: {debug}");
    }
}

#[test]
fn secret_file_as_config_not_echoed() {
    // Passing the secret file where the configuration belongs is an easy mistake, and the
    // parse error must not quote the file's first line then.
    let fixture = Fixture::new();

    let error = match load(&fixture.secret_path(), no_env()) {
        Ok(_) => panic!("a secret file is not a configuration"),
        Err(error) => error,
    };
    let display = error.to_string();

    assert!(
        !display.contains(SECRET),
        "the parse error leaks the secret: {display}"
    );
}

#[test]
fn extra_route_without_workspace_rejected() {
    let fixture = Fixture::new();
    let path = fixture.config_with(
        "",
        "\n[[policy.extra_routes]]\nmethod = \"GET\"\npath = \"/agent-api/v1/runs/{run}\"\nscope = \"env:read\"\n",
    );

    let error = load(&path, no_env()).unwrap_err();
    let found = problems(error);

    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].0, "policy.extra_routes");
    assert!(found[0].1.contains("{ws}"), "{found:?}");
}

#[test]
fn extra_route_lowercase_method_rejected() {
    let fixture = Fixture::new();
    let path = fixture.config_with(
        "",
        "\n[[policy.extra_routes]]\nmethod = \"get\"\npath = \"/agent-api/v1/workspaces/{ws}/runs\"\nscope = \"env:read\"\n",
    );

    let error = load(&path, no_env()).unwrap_err();
    let found = problems(error);

    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].0, "policy.extra_routes");
    assert!(found[0].1.contains("'get'"), "{found:?}");
    assert!(found[0].1.contains("upper case"), "{found:?}");
}

#[test]
fn extra_route_scope_becomes_known() {
    let fixture = Fixture::new();
    let path = fixture.config_with(
        "",
        "\n[[policy.extra_routes]]\nmethod = \"GET\"\npath = \"/agent-api/v1/workspaces/{ws}/runs/{run}\"\nscope = \"runs:read\"\n",
    );
    let environment = env(&[("AGENT_ACCESS_PROXY__POLICY__SCOPES", "env:read,runs:read")]);

    let settings = load(&path, environment).expect("the extra route's scope is known");

    assert_eq!(scope_names(&settings), ["env:read", "runs:read"]);
    let allowed = settings
        .policy
        .decide(
            &Method::GET,
            "/agent-api/v1/workspaces/ws_test/runs/run_1",
            None,
        )
        .expect("the extra route is allowed");
    assert_eq!(allowed.route.scope.as_str(), "runs:read");
}

#[test]
fn extra_route_scope_unknown_without_route() {
    let fixture = Fixture::new();
    let environment = env(&[("AGENT_ACCESS_PROXY__POLICY__SCOPES", "env:read,runs:read")]);

    let error = load(&fixture.minimal_config(), environment).unwrap_err();
    let found = problems(error);

    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].0, "policy.scopes");
    assert!(found[0].1.contains("'runs:read'"), "{found:?}");
}

#[test]
fn several_problems_reported_together() {
    let fixture = Fixture::new();
    let path = fixture.config_with(
        "",
        "\n[[policy.extra_routes]]\nmethod = \"get\"\npath = \"/agent-api/v1/workspaces/{ws}/runs\"\nscope = \"env:read\"\n",
    );
    let environment = env(&[
        ("AGENT_ACCESS_PROXY__LISTEN__ADDRESS", "localhost"),
        ("AGENT_ACCESS_PROXY__UPSTREAM__URL", "ftp://api.example.com"),
        ("AGENT_ACCESS_PROXY__UPSTREAM__CONNECT_TIMEOUT_SECONDS", "0"),
        (
            "AGENT_ACCESS_PROXY__KEY__SECRET_FILE",
            "/nonexistent/agent-access-proxy/secret",
        ),
        ("AGENT_ACCESS_PROXY__POLICY__WORKSPACE", "ws/other"),
        ("AGENT_ACCESS_PROXY__POLICY__SCOPES", "env:read,env:write"),
        ("AGENT_ACCESS_PROXY__POLICY__MAX_BODY_BYTES", "0"),
    ]);

    let error = load(&path, environment).unwrap_err();
    let message = error.to_string();
    let keys: Vec<String> = problems(error).into_iter().map(|(key, _)| key).collect();

    for expected in [
        "listen.address",
        "upstream.url",
        "upstream.connect_timeout_seconds",
        "key.secret_file",
        "policy.workspace",
        "policy.extra_routes",
        "policy.scopes",
        "policy.max_body_bytes",
    ] {
        assert!(
            keys.iter().any(|key| key == expected),
            "{expected} missing from {keys:?}"
        );
        assert!(
            message.contains(expected),
            "{expected} missing from: {message}"
        );
    }
}

#[test]
fn env_override_keeps_string_values_verbatim() {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret");
    std::fs::write(&secret, "s3cret-env-verbatim\n").unwrap();
    let path = dir.path().join("proxy.toml");
    std::fs::write(
        &path,
        format!(
            "[upstream]\nurl = \"http://127.0.0.1:9\"\n[key]\nid = \"k\"\nsecret_file = {secret:?}\n\
             [policy]\nworkspace = \"ws\"\nscopes = [\"env:read\"]\n"
        ),
    )
    .unwrap();
    let environment: std::collections::HashMap<String, String> = [
        ("AGENT_ACCESS_PROXY__KEY__ID", "007"),
        ("AGENT_ACCESS_PROXY__POLICY__WORKSPACE", "1e5"),
        (
            "AGENT_ACCESS_PROXY__POLICY__SCOPES",
            "env:read, events:write",
        ),
        ("AGENT_ACCESS_PROXY__POLICY__MAX_BODY_BYTES", "2048"),
        (
            "AGENT_ACCESS_PROXY__UPSTREAM__RESPONSE_TIMEOUT_SECONDS",
            "1.5",
        ),
        ("AGENT_ACCESS_PROXY__ADMIN__ENABLED", "false"),
    ]
    .into_iter()
    .map(|(key, value)| (key.to_owned(), value.to_owned()))
    .collect();

    let file =
        agent_access_proxy::config::load_file_with_env(Some(&path), Some(environment)).unwrap();
    let settings = agent_access_proxy::config::validate(file).unwrap();

    assert_eq!(settings.key.id, "007");
    assert_eq!(settings.policy.workspace, "1e5");
    assert_eq!(settings.policy.scopes.len(), 2);
    assert_eq!(settings.max_body_bytes, 2048);
    assert_eq!(
        settings.upstream.response_timeout,
        std::time::Duration::from_millis(1500)
    );
    assert_eq!(settings.admin, None);
}

#[test]
fn extra_route_shadowing_built_in_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret");
    std::fs::write(&secret, "s3cret-shadow\n").unwrap();
    let path = dir.path().join("proxy.toml");
    std::fs::write(
        &path,
        format!(
            "[upstream]\nurl = \"http://127.0.0.1:9\"\n[key]\nid = \"k\"\nsecret_file = {secret:?}\n\
             [policy]\nworkspace = \"ws\"\nscopes = [\"env:read\"]\n\
             [[policy.extra_routes]]\nmethod = \"POST\"\npath = \"/agent-api/v1/workspaces/{{ws}}/files/{{id}}/proposals\"\nscope = \"env:read\"\n"
        ),
    )
    .unwrap();

    let error = agent_access_proxy::config::load(Some(&path))
        .unwrap_err()
        .to_string();

    assert!(error.contains("policy.extra_routes"), "{error}");
    assert!(error.contains("files:propose"), "{error}");
}

#[test]
fn body_budget_below_body_limit_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret");
    std::fs::write(&secret, "s3cret-budget\n").unwrap();
    let path = dir.path().join("proxy.toml");
    std::fs::write(
        &path,
        format!(
            "[listen]\nmax_buffered_body_bytes = 1000\n[upstream]\nurl = \"http://127.0.0.1:9\"\n\
             [key]\nid = \"k\"\nsecret_file = {secret:?}\n[policy]\nworkspace = \"ws\"\nscopes = [\"env:read\"]\nmax_body_bytes = 2000\n"
        ),
    )
    .unwrap();

    let error = agent_access_proxy::config::load(Some(&path))
        .unwrap_err()
        .to_string();

    assert!(error.contains("listen.max_buffered_body_bytes"), "{error}");
    assert!(error.contains("2000"), "{error}");
}
