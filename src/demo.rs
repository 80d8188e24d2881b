//! `demo`: the stand-in of the API and the proxy in front of it, with a throwaway key.

use std::sync::Arc;

use crate::cli::{DemoArgs, Exit};
use crate::config::{self, LogConfig};
use crate::secret::Secret;
use crate::signing::{self, SignatureEncoding};
use crate::standin::StandIn;

/// Scopes of the demo when none are given: everything but `files:propose`, so that the demo
/// also shows what a denial looks like.
const DEFAULT_DEMO_SCOPES: [&str; 3] = ["env:read", "artifacts:write", "events:write"];

/// Runs the demo until Ctrl-C or SIGTERM.
pub async fn run(args: DemoArgs) -> Exit {
    crate::telemetry::init_logging(&LogConfig::default());
    match start(args).await {
        Ok(()) => Exit::Ok,
        Err(message) => {
            eprintln!("error: {message}");
            Exit::Usage
        }
    }
}

async fn start(args: DemoArgs) -> Result<(), String> {
    // The throwaway key passes through a private temporary file, because the proxy reads
    // secrets from files as in production. The file goes as soon as the key is loaded, so
    // a demo that is killed leaves no secret behind.
    let key_dir = tempfile_dir()?;
    let secret_path = key_dir.path.join("secret");
    let secret_text = signing::new_nonce() + &signing::new_nonce();
    write_private(&secret_path, secret_text.as_bytes())?;
    let key_id = format!("demo_{}", &signing::new_nonce()[..12]);

    let upstream_listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|error| format!("cannot start the stand-in on loopback: {error}"))?;
    let upstream_address = upstream_listener
        .local_addr()
        .map_err(|error| error.to_string())?;
    let stand_in = StandIn::new(&args.workspace, "", SignatureEncoding::Hex);
    stand_in.add_key(
        &key_id,
        Secret::new(secret_text.into_bytes()).map_err(|error| error.to_string())?,
    );
    tokio::spawn(Arc::clone(&stand_in).serve(upstream_listener, None, std::future::pending()));

    let scopes = if args.scopes.is_empty() {
        DEFAULT_DEMO_SCOPES
            .iter()
            .map(|scope| scope.to_string())
            .collect()
    } else {
        args.scopes.clone()
    };
    let upstream_url = format!("http://{upstream_address}");
    let text = demo_config(&args, &upstream_url, &key_id, &secret_path, &scopes);
    let settings = config::load_toml(&text).map_err(|error| error.to_string())?;
    drop(key_dir);
    let running = crate::app::start(&settings, None, crate::shutdown::wait_for_signal())
        .await
        .map_err(|error| error.to_string())?;

    print_banner(
        &args,
        &upstream_address.to_string(),
        &key_id,
        &settings,
        running.admin,
    );
    running.done.await.map_err(|error| error.to_string())?;
    Ok(())
}

fn demo_config(
    args: &DemoArgs,
    upstream_url: &str,
    key_id: &str,
    secret_path: &std::path::Path,
    scopes: &[String],
) -> String {
    let scopes: Vec<String> = scopes.iter().map(|scope| format!("{scope:?}")).collect();
    // The demo key never changes and its file is removed after loading, so the reload
    // interval is a day: polling a missing file would only log errors.
    format!(
        "[listen]\naddress = \"{}\"\n\n\
         [admin]\naddress = \"127.0.0.1:0\"\n\n\
         [upstream]\nurl = \"{upstream_url}\"\n\n\
         [key]\nid = \"{key_id}\"\nsecret_file = {:?}\nreload_interval_seconds = 86400\n\n\
         [policy]\nworkspace = {:?}\nscopes = [{}]\n",
        args.listen,
        secret_path.display().to_string(),
        args.workspace,
        scopes.join(", "),
    )
}

fn print_banner(
    args: &DemoArgs,
    upstream: &str,
    key_id: &str,
    settings: &config::Settings,
    admin: Option<std::net::SocketAddr>,
) {
    let base = format!("http://{}", args.listen);
    let workspace = &args.workspace;
    println!("agent-access-proxy demo");
    println!(
        "  stand-in of the API: http://{upstream} (workspace {workspace}, throwaway key {key_id})"
    );
    println!("  allowed scopes:      {}", settings.policy.scope_list());
    println!();
    println!("Agent base URL: {base}");
    println!();
    println!("Read the environment through the proxy:");
    println!("  curl -s {base}/agent-api/v1/workspaces/{workspace}/environment");
    println!("Write an artifact:");
    println!("  curl -s -X POST -H 'content-type: application/json' -d '{{\"title\":\"Hello\",\"text\":\"# Hello\"}}' {base}/agent-api/v1/workspaces/{workspace}/artifacts");
    let proposals_allowed = settings
        .policy
        .scopes
        .iter()
        .any(|scope| scope.as_str() == "files:propose");
    if !proposals_allowed {
        println!("Denied, because files:propose is not in the allowlist:");
        println!("  curl -s -X POST -d '{{\"content\":\"new\"}}' {base}/agent-api/v1/workspaces/{workspace}/files/fn_memory/proposals");
    }
    println!("See what agents wrote (stand-in only): curl -s http://{upstream}/_stand-in/state");
    if let Some(admin) = admin {
        println!("Metrics: curl -s http://{admin}/metrics");
    }
    println!();
    println!("Press Ctrl-C to stop.");
}

/// A private temporary directory, removed on drop.
struct TempDir {
    path: std::path::PathBuf,
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

fn tempfile_dir() -> Result<TempDir, String> {
    use std::os::unix::fs::DirBuilderExt;
    let path =
        std::env::temp_dir().join(format!("agent-access-proxy-demo-{}", signing::new_nonce()));
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&path)
        .map_err(|error| format!("cannot create {}: {error}", path.display()))?;
    Ok(TempDir { path })
}

fn write_private(path: &std::path::Path, bytes: &[u8]) -> Result<(), String> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|error| format!("cannot create {}: {error}", path.display()))?;
    file.write_all(bytes)
        .map_err(|error| format!("cannot write {}: {error}", path.display()))
}
