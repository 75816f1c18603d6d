#!/usr/bin/env bash
# The whole test suite: README's second command. `.ci/run` runs exactly this.
# Run as root on Debian 12: the kernel tests load XDP programs and build network namespaces.
# Installs what is missing first (scripts/bootstrap.sh is idempotent and quick when done).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"

bash scripts/bootstrap.sh

echo "== format and lints"
cargo fmt --all -- --check
cargo clippy --all-targets -- -D warnings
cargo xtask clippy-ebpf

# Namespaces present before the tests (another lab on this machine) are not this run's.
before=$(ip netns list | awk '{print $1}' | grep '^dwcp-' | sort || true)

echo "== build (the daemons and the CLI that the lab tests run: cargo builds only a test's own package's binaries)"
cargo build --bins

echo "== tests (unit, conformance, property, BPF_PROG_TEST_RUN fixtures, network-namespace labs)"
# This suite runs as root on a machine with BPF and netns: the privileged tests run too.
export DWCP_PRIVILEGED=1
mkdir -p target && cargo test --no-fail-fast 2>&1 | tee target/test-output.txt
cargo test --doc

echo "== leftovers"
after=$(ip netns list | awk '{print $1}' | grep '^dwcp-' | sort || true)
left=$(comm -13 <(echo "$before") <(echo "$after") | grep . || true)
if [ -n "$left" ]; then
  echo "tests left network namespaces behind: $left" >&2
  exit 1
fi
echo "all tests passed"
