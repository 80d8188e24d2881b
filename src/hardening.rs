//! Process hardening applied before any secret is loaded.
//!
//! Core dumps are disabled and the process is marked non-dumpable. A non-dumpable process
//! cannot be attached to with ptrace, and its `/proc/PID/mem` and `/proc/PID/environ` cannot
//! be read, by other processes of the same user, so an agent running as the same user
//! cannot lift the secret from memory. This does not stop root, or a process with
//! CAP_SYS_PTRACE, and it does not protect the secret file on disk.

use rustix::process::{self, DumpableBehavior, Resource, Rlimit};

/// Disables core dumps and marks the process non-dumpable.
pub fn harden_process() -> std::io::Result<()> {
    let no_core = Rlimit {
        current: Some(0),
        maximum: Some(0),
    };
    process::setrlimit(Resource::Core, no_core)?;
    process::set_dumpable_behavior(DumpableBehavior::NotDumpable)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hardening_disables_dumps() {
        harden_process().unwrap();

        assert_eq!(
            process::dumpable_behavior().unwrap(),
            DumpableBehavior::NotDumpable
        );
        let core = process::getrlimit(Resource::Core);
        assert_eq!(core.current, Some(0));
        assert_eq!(core.maximum, Some(0));
    }
}
