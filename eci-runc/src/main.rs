//! eci-runc: use it wherever runc is used. This binary only reads the
//! command line and calls [`eci_runc::lifecycle`]; see there for what each
//! command does.

use std::process::ExitCode;

use eci_runc::{
    args,
    lifecycle::{self, LifecycleError, Runtime},
    report::Reporter,
};
use oci_spec::runtime::State;

fn exit(report: &Reporter, result: Result<i32, LifecycleError>) -> ExitCode {
    match result {
        Ok(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        // runc already said why, in the same log.
        Err(LifecycleError::RuncFailed(code)) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        Err(e) => {
            report.error(&e.to_string());
            ExitCode::FAILURE
        }
    }
}

/// The container state runc gives a hook on stdin.
fn hook_state() -> Result<State, LifecycleError> {
    serde_json::from_reader(std::io::stdin().lock())
        .map_err(|e| LifecycleError::Hook(format!("reading the container state on stdin: {e}")))
}

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    eci_runc::timing::start_from_env();
    let inv = args::parse(&argv);
    let report = Reporter::new(&inv);
    let runtime = match Runtime::from_env() {
        Ok(r) => r,
        Err(e) => return exit(&report, Err(e)),
    };
    let result = match inv.command.as_deref() {
        Some("create") => runtime.create(&inv, &report).map(|()| 0),
        Some("run") => runtime.run(&inv, &report),
        Some("start") => runtime.start(&inv),
        Some("delete") => runtime.delete(&inv, &report),
        Some(lifecycle::HOOK_REGISTER) => hook_state()
            .and_then(|s| runtime.hook_register(&s))
            .map(|()| 0),
        Some(lifecycle::HOOK_RELEASE) => hook_state()
            .and_then(|s| runtime.hook_release(&s, &report))
            .map(|()| 0),
        _ => Err(runtime.pass_through(&inv)),
    };
    eci_runc::timing::finish(inv.command.as_deref().unwrap_or("-"));
    exit(&report, result)
}
