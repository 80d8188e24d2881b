//! The shutdown signal: SIGTERM or SIGINT starts a graceful drain, a second one exits at once.

use tokio::signal::unix::{signal, SignalKind};

/// Exit code used when a second signal interrupts the drain.
pub const INTERRUPTED_EXIT_CODE: i32 = 130;

/// Completes on the first SIGTERM or SIGINT, and arms a watcher that ends the process on
/// the next one, so an operator can always stop a slow drain.
pub async fn wait_for_signal() {
    let mut terminate = signal(SignalKind::terminate()).expect("installing a SIGTERM handler");
    let mut interrupt = signal(SignalKind::interrupt()).expect("installing a SIGINT handler");

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
