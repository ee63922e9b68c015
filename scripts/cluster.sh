#!/usr/bin/env bash
# A local LatticeFS cluster on loopback, for trying it out and for development.
#   scripts/cluster.sh up            build (release), install what is missing, start 3 metaservers and
#                                    6 chunkservers, mount at $LATTICE_MOUNT; starts only what is missing
#   scripts/cluster.sh down          unmount and stop everything it started (state is kept)
#   scripts/cluster.sh status [--json]  the processes, then `metaserver status`
#   scripts/cluster.sh join          add one more chunkserver (`metaserver ca issue`, `chunkserver join`)
#   scripts/cluster.sh drain ID      drain chunkserver ID (see status) until it holds nothing
#                                    (`chunkserver drain ID --wait`); then it can be stopped
# Environment [default]:
#   LATTICE_STATE         all state: certificates, data, logs, <role>-<n>.pid files [./.lattice]
#   LATTICE_MOUNT         mount point [./mnt]
#   LATTICE_METASERVERS   number of metaservers [3]
#   LATTICE_CHUNKSERVERS  number of chunkservers [6]
#   LATTICE_PORT_BASE     metaserver n listens on 127.0.0.1:(base+n) [7100]
#   LATTICE_POLICY        a new cluster's default redundancy policy [rs:4+2 from 6 chunkservers,
#                         else mirror:N]; later `metaserver policy` changes it
set -euo pipefail
cd "$(dirname "$0")/.."
export LATTICE_STATE=${LATTICE_STATE:-$PWD/.lattice} LATTICE_MOUNT=${LATTICE_MOUNT:-$PWD/mnt}
bin=target/release

build() {
  . scripts/deps.sh
  lattice_deps
  cargo build --release --bins
  # mount(8) finds the helper for `mount -t fuse.latticefs` (and /etc/fstab) here.
  if [[ $(id -u) == 0 && ! -e /sbin/mount.fuse.latticefs ]]; then
    ln -sf "$PWD/$bin/fs-client" /sbin/mount.fuse.latticefs
  fi
}

case "${1:-}" in
  up) build; exec "$bin/lattice-harness" up ;;
  down) exec "$bin/lattice-harness" down ;;
  status) shift; exec "$bin/lattice-harness" status "$@" ;;
  join) exec "$bin/lattice-harness" join ;;
  drain) shift; exec "$bin/lattice-harness" drain "$@" ;;
  -h | --help | "") sed -n '2,18s/^# \{0,1\}//p' "$0"; [[ -n ${1:-} ]] ;;
  *) echo "cluster.sh: unknown command '$1' (up, down, status, join, drain)" >&2; exit 2 ;;
esac
