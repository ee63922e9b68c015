# Sourced by the other scripts: installs what LatticeFS needs on a fresh Debian machine.
# Rust comes from rustup (Debian's rustc is too old); the rest from Debian's packages.

lattice_need_pkgs() { # PACKAGE...: apt-get install whichever are missing
  local missing=() p
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  ((${#missing[@]})) || return 0
  echo "installing ${missing[*]} (Debian packages)" >&2
  local sudo=()
  [[ $(id -u) == 0 ]] || sudo=(sudo)
  export DEBIAN_FRONTEND=noninteractive
  "${sudo[@]}" apt-get install -y -qq "${missing[@]}" >/dev/null ||
    { "${sudo[@]}" apt-get update -qq && "${sudo[@]}" apt-get install -y -qq "${missing[@]}" >/dev/null; }
}

lattice_need_rust() {
  [[ -f $HOME/.cargo/env ]] && . "$HOME/.cargo/env"
  command -v cargo >/dev/null && return 0
  lattice_need_pkgs curl ca-certificates
  echo "installing the Rust toolchain with rustup" >&2
  curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal --component rustfmt,clippy >&2
  . "$HOME/.cargo/env"
}

lattice_need_fsx() { # fsx, the file system exerciser the tests and soak.sh run on a mount
  [[ -x $HOME/.cargo/bin/fsx ]] && "$HOME/.cargo/bin/fsx" --version | grep -q "fsx 0.3.2" && return 0
  echo "installing fsx 0.3.2 (cargo install)" >&2
  cargo install --quiet --locked fsx --version 0.3.2 >&2
}

lattice_deps() {
  # fuse3 for mounting; the rest are tools the tests use on a mount (and pjdfstest's build).
  lattice_need_pkgs build-essential pkg-config fuse3 util-linux procps rsync git tar acl attr libcap2-bin python3 libacl1-dev bc
  lattice_need_rust
}
