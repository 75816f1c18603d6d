#!/usr/bin/env bash
# README's first command: the main job. Sets the machine up if needed, then runs the lab.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
bash scripts/bootstrap.sh
exec cargo xtask demo "$@"
