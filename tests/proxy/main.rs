//! End-to-end tests of the proxy over real sockets, against the verifying stand-in.

mod bodies;
mod faults;
mod forwarding;
mod harness;
mod policy;
mod streaming;
mod tls;
