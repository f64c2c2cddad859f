//! `natter-bots`: parse the configuration (`--check-config` validates it and exits), set up
//! logging, run the worker and its REST API until SIGTERM or Ctrl-C.

use std::process::ExitCode;

fn main() -> ExitCode {
    natter_ops::run_main(natter_bots::run)
}
