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
# As root on a machine with BPF and netns the privileged tests run too (without these
# features they are listed as ignored: `cargo test` as any user runs the rest).
PRIVILEGED="dwcp-lab/privileged dwcp-dataplane/privileged dwcp-tunnels/privileged"
mkdir -p target
rm -f target/skipped.txt   # tests that cannot run here append to it (dwcp_lab::skip)
status=0
cargo test --no-fail-fast --features "$PRIVILEGED" 2>&1 | tee target/test-output.txt || status=$?
cargo test --doc 2>&1 | tee -a target/test-output.txt || status=$?

echo "== leftovers"
after=$(ip netns list | awk '{print $1}' | grep '^dwcp-' | sort || true)
left=$(comm -13 <(echo "$before") <(echo "$after") | grep . || true)
if [ -n "$left" ]; then
  echo "tests left network namespaces behind: $left" >&2
  status=1
fi

echo "== summary"
# A test that found it cannot run here returned early and counts as passed to cargo: it is
# counted as skipped instead, with its reason, as are ignored tests. A skip is never a pass.
runtime_skips=$( [ -f target/skipped.txt ] && wc -l < target/skipped.txt || echo 0 )
grep -E '^test .* \.\.\. ignored' target/test-output.txt | sed 's/^test /skipped: /' || true
[ -f target/skipped.txt ] && sed 's/^/skipped: /' target/skipped.txt
grep -E '^test .* \.\.\. FAILED$' target/test-output.txt | sed 's/^test /failed: /' || true
awk -v s="$runtime_skips" '/^test result:/ { p += $4; f += $6; i += $8 }
  END { printf "%d passed, %d failed, %d skipped\n", p - s, f, i + s }' target/test-output.txt
if [ "$status" -ne 0 ]; then
  echo "the test suite failed (status $status)" >&2
  exit "$status"
fi
echo "all tests passed"
