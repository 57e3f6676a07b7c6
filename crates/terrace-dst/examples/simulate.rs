//! `cargo run --release -p terrace-dst --example simulate -- --seeds N [--seed S] [--minutes M]`:
//! what `cargo xtask simulate` runs.

fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match terrace_dst::cli(&args) {
        Ok(true) => std::process::ExitCode::SUCCESS,
        Ok(false) => std::process::ExitCode::FAILURE,
        Err(e) => {
            eprintln!("simulate: {e}");
            std::process::ExitCode::from(2)
        }
    }
}
