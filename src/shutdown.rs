//! The shutdown signal: SIGTERM or SIGINT starts a graceful drain, a second one exits at once.

use std::future::Future;

use tokio::signal::unix::{signal, SignalKind};

/// Exit code used when a second signal interrupts the drain.
pub const INTERRUPTED_EXIT_CODE: i32 = 130;

/// Installs the SIGTERM and SIGINT handlers now, and returns a future that completes on
/// the first of them. After that, the next signal ends the process at once, so an operator
/// can always stop a slow drain.
///
/// The handlers are installed before this returns, not when the future is first polled:
/// a signal that arrives in between would otherwise kill the process with the default
/// action instead of draining it.
pub fn wait_for_signal() -> impl Future<Output = ()> + Send + 'static {
    let terminate = signal(SignalKind::terminate());
    let interrupt = signal(SignalKind::interrupt());

    async move {
        let (mut terminate, mut interrupt) = match (terminate, interrupt) {
            (Ok(terminate), Ok(interrupt)) => (terminate, interrupt),
            (Err(error), _) | (_, Err(error)) => {
                tracing::error!(error = %error, "cannot install the SIGTERM and SIGINT handlers; stop the process with SIGKILL");
                return std::future::pending().await;
            }
        };
        let name = tokio::select! {
            _ = terminate.recv() => "SIGTERM",
            _ = interrupt.recv() => "SIGINT",
        };
        tracing::info!(
            signal = name,
            "shutdown signal received; send another to exit at once"
        );

        tokio::spawn(async move {
            let name = tokio::select! {
                _ = terminate.recv() => "SIGTERM",
                _ = interrupt.recv() => "SIGINT",
            };
            tracing::warn!(
                signal = name,
                "second shutdown signal; exiting without draining"
            );
            std::process::exit(INTERRUPTED_EXIT_CODE);
        });
    }
}
