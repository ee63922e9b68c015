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
# Test clusters keep their state on tmpfs when /dev/shm has room: a kill -9 keeps what a
# process wrote either way, and the two cores of CI go to LatticeFS rather than to ext4
# creating and deleting shard files (the fsx tests ran in 457 s instead of 665-745 s).
# /dev/shm itself, not a directory in it: pjdfstest binds Unix sockets deep inside the
# mount, and a socket path may not exceed 107 bytes. A TMPDIR already set is kept.
shm_free=$(df --output=avail -k /dev/shm 2>/dev/null | tail -n 1 | tr -d ' ' || true)
if [[ -z ${TMPDIR:-} && $shm_free =~ ^[0-9]+$ ]] && ((shm_free > 8 * 1024 * 1024)); then
  export TMPDIR=/dev/shm
fi
cargo test --release --workspace "$@"
