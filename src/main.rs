use std::process::ExitCode;

fn main() -> ExitCode {
    agent_access_proxy::cli::main()
}
