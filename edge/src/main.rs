//! `natter-edge`: parse the configuration (`--check-config` validates it and exits), set up
//! logging, run the edge until SIGTERM/SIGINT; see the crate docs and `natter-edge --help`.

use std::process::ExitCode;

fn main() -> ExitCode {
    natter_ops::run_main(natter_edge::run)
}
