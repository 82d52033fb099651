//! lockstepctl: the operator's CLI for lockstepd (see the library).

use std::process::ExitCode;

fn main() -> ExitCode {
    let mut out = std::io::stdout().lock();
    match lockstep_ctl::run_args(std::env::args_os(), &mut out) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("lockstepctl: {e:#}");
            ExitCode::FAILURE
        }
    }
}
