#!/usr/bin/env bash
# Fresh-machine set-up for dwcp on Debian 12 (kernel with BPF/XDP/BTF), run as root.
# Idempotent: every step checks first and does nothing when already done.
# See ../shared/TOOLCHAIN.md for why each piece is needed.
set -euo pipefail

log() { printf '[bootstrap] %s\n' "$*" >&2; }

if [ "$(id -u)" -ne 0 ]; then
  echo "bootstrap.sh must run as root (it installs packages and mounts bpffs)" >&2
  exit 1
fi

export DEBIAN_FRONTEND=noninteractive
APT_PKGS=(llvm-22-dev libpolly-22-dev libzstd-dev zlib1g-dev bpftool iproute2 ethtool
          nftables iperf3 iputils-ping netcat-openbsd wireguard-go wireguard-tools prometheus jq tcpdump curl
          etcd-server etcd-client protobuf-compiler)

missing=()
for p in "${APT_PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  log "installing apt packages: ${missing[*]}"
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  # The Debian prometheus package starts a system service; dwcp's tests start their own.
  if [[ " ${missing[*]} " == *" prometheus "* ]]; then
    systemctl disable --now prometheus prometheus-node-exporter >/dev/null 2>&1 || true
    pkill -x prometheus >/dev/null 2>&1 || true
    pkill -x prometheus-node-exporter >/dev/null 2>&1 || true
  fi
  # So does etcd-server (enabled, started where systemd runs): the tests start their own
  # clusters, and the default member would hold 2379/2380.
  if [[ " ${missing[*]} " == *" etcd-server "* ]]; then
    systemctl disable --now etcd >/dev/null 2>&1 || true
    service etcd stop >/dev/null 2>&1 || true
  fi
fi

export PATH="$HOME/.cargo/bin:$PATH"
if ! rustup toolchain list | grep -q '^nightly'; then
  log "installing nightly toolchain"
  rustup toolchain install nightly --profile minimal
fi
if ! rustup component list --toolchain nightly --installed 2>/dev/null | grep -q '^rust-src'; then
  log "adding rust-src to nightly (build-std needs it)"
  rustup component add rust-src --toolchain nightly
fi
for c in rustfmt clippy; do
  rustup component list --installed 2>/dev/null | grep -q "^$c" || rustup component add "$c"
done

if ! command -v bpf-linker >/dev/null 2>&1; then
  log "building bpf-linker against LLVM 22 (about a minute)"
  LLVM_PREFIX=/usr/lib/llvm-22 cargo install bpf-linker --locked \
    --no-default-features --features llvm-22
fi

if ! mountpoint -q /sys/fs/bpf; then
  log "mounting bpffs on /sys/fs/bpf"
  mount -t bpf bpf /sys/fs/bpf
fi

log "ok"
