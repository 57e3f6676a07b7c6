//! Runs the Google simulator as its own process, for load and chaos runs.
//!
//! `TERRACE_SIM_PORT` (default 0), `GOOGLE_MAPS_API_KEY` and `GEMINI_API_KEY`
//! (default: the simulator's own keys). Prints `listening on ADDR`, serves
//! until SIGINT/SIGTERM, then shuts down within two seconds. Script it with
//! the `/_sim/…` control endpoint.

use std::process::ExitCode;
use terrace_simulator::{Simulator, SimulatorConfig};

#[tokio::main(flavor = "multi_thread")]
async fn main() -> ExitCode {
    let mut config = SimulatorConfig::default();
    if let Ok(port) = std::env::var("TERRACE_SIM_PORT") {
        match port.parse() {
            Ok(p) => config.port = p,
            Err(_) => {
                eprintln!("TERRACE_SIM_PORT: not a port number: {port}");
                return ExitCode::from(2);
            }
        }
    }
    if let Ok(k) = std::env::var("GOOGLE_MAPS_API_KEY") {
        config.maps_key = k;
    }
    if let Ok(k) = std::env::var("GEMINI_API_KEY") {
        config.gemini_key = k;
    }
    // Handlers first, so that a signal sent right after the address is
    // printed is not lost.
    let signals = match Signals::install() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("could not install signal handlers: {e}");
            return ExitCode::from(1);
        }
    };
    let sim = match Simulator::start(config).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(1);
        }
    };
    println!("listening on {}", sim.addr());
    signals.wait().await;
    if sim.shutdown().await { ExitCode::SUCCESS } else { ExitCode::from(1) }
}

struct Signals {
    interrupt: tokio::signal::unix::Signal,
    terminate: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> std::io::Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Self { interrupt: signal(SignalKind::interrupt())?, terminate: signal(SignalKind::terminate())? })
    }

    async fn wait(mut self) {
        tokio::select! {
            _ = self.interrupt.recv() => {}
            _ = self.terminate.recv() => {}
        }
    }
}
