#!/usr/bin/env bash
# Soak test: fsx (the file system exerciser) on a mount of a local cluster, over many seeds
# and every mix in tests/fsx/, until OPS operations are done; then prints
#   soak: N ops, M mismatches
# and exits non-zero if any run failed (its fsx report is kept under $LATTICE_STATE/soak).
# Every ten runs it prints how far it has got.
#   scripts/soak.sh [OPS]          (default 1000000)
# Environment [default]: LATTICE_SOAK_PARALLEL fsx runs at once [4]; the cluster is
# scripts/cluster.sh's, on its own state, mount and ports unless set:
# LATTICE_STATE [./.lattice-soak], LATTICE_MOUNT [./mnt-soak], LATTICE_PORT_BASE [7200].
set -euo pipefail
cd "$(dirname "$0")/.."
ops=${1:-1000000}
[[ $ops =~ ^[0-9]+$ ]] || { echo "soak.sh: OPS must be a number, not '$ops'" >&2; exit 2; }
export LATTICE_STATE=${LATTICE_STATE:-$PWD/.lattice-soak}
export LATTICE_MOUNT=${LATTICE_MOUNT:-$PWD/mnt-soak}
export LATTICE_PORT_BASE=${LATTICE_PORT_BASE:-7200}
parallel=${LATTICE_SOAK_PARALLEL:-4}
. scripts/deps.sh
lattice_deps
lattice_need_fsx
fsx=$HOME/.cargo/bin/fsx

scripts/cluster.sh up
trap 'scripts/cluster.sh down >/dev/null' EXIT
out=$LATTICE_STATE/soak
rm -rf "$out" && mkdir -p "$out"

mixes=(plain mmap copy small chunk)
# Operations per run: a run is one file and one seed; the chunk mix's file is 72 MiB.
per_run() { [[ $1 == chunk ]] && echo 2000 || echo 10000; }

started=0 done_ops=0 runs=0 mismatches=0 seed=0
declare -A running=()   # pid -> "mix seed ops"
finish() { # PID: account for one finished run
  local pid=$1 mix seed n
  read -r mix seed n <<<"${running[$pid]}"
  unset "running[$pid]"
  if wait "$pid"; then
    done_ops=$((done_ops + n))
    rm -f "$out/$mix-$seed.log" "$LATTICE_MOUNT/soak-$mix-$seed"
  else
    mismatches=$((mismatches + 1))
    echo "soak: fsx mix $mix seed $seed failed: $out/$mix-$seed.log" >&2
    tail -5 "$out/$mix-$seed.log" >&2
  fi
  runs=$((runs + 1))
  ((runs % 10)) || echo "soak: $done_ops ops so far, $mismatches mismatches ($runs runs, $(date +%T))"
}
while ((started < ops)); do
  if ((${#running[@]} >= parallel)); then
    wait -n -p pid "${!running[@]}" || true
    finish "$pid"
    continue
  fi
  seed=$((seed + 1))
  mix=${mixes[$(((seed - 1) % ${#mixes[@]}))]}
  n=$(per_run "$mix")
  "$fsx" -N "$n" -S "$seed" -f "tests/fsx/$mix.toml" -P "$out" "$LATTICE_MOUNT/soak-$mix-$seed" \
    >"$out/$mix-$seed.log" 2>&1 &
  running[$!]="$mix $seed $n"
  started=$((started + n))
done
for pid in "${!running[@]}"; do finish "$pid"; done
echo "soak: $done_ops ops, $mismatches mismatches ($runs runs of fsx, mixes ${mixes[*]})"
((mismatches == 0))
