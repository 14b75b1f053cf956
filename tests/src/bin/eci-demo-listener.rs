//! A stand-in for an engine's API socket in the demo: listens on a Unix
//! socket and answers every connection with one line.

use std::{io::Write, os::unix::net::UnixListener, process::ExitCode};

fn main() -> ExitCode {
    let Some(path) = std::env::args().nth(1) else {
        eprintln!("usage: eci-demo-listener PATH");
        return ExitCode::from(2);
    };
    let _ = std::fs::remove_file(&path);
    let listener = match UnixListener::bind(&path) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("bind {path}: {e}");
            return ExitCode::FAILURE;
        }
    };
    for mut conn in listener.incoming().flatten() {
        let _ = conn.write_all(b"engine API: hello\n");
    }
    ExitCode::SUCCESS
}
