#!/usr/bin/env bash
# Runs every LatticeFS test: formatting, unit and property tests, and the integration tests
# that start real metaserver and chunkserver processes on loopback. Installs what it needs
# on a fresh Debian machine. Run as root (tests mount filesystems).
#   scripts/test.sh [CARGO TEST ARGS...]   e.g. scripts/test.sh -p lattice-tests storage
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/deps.sh
lattice_deps
lattice_need_fsx

cargo fmt --all --check
cargo clippy --all-targets -- -D warnings
# Integration tests run the release binaries: built here with the tests, in one build (one
# dependency graph keeps both cores busy).
cargo build --release --workspace --bins --tests
cargo test --release --workspace "$@"
