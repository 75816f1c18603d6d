#!/usr/bin/env bash
# README's first command: the main job. Sets the machine up if needed, then runs the
# multi-region lab: three regions (us-east-1, eu-west-1, ap-south-1) in network namespaces,
# a real dwcp-agent on each region's gateway, traffic between every pair of regions, a link
# cut (the agents route around it), healed again. The lab stays up afterwards so you can look
# at it (the commands are printed at the end); `--down` removes it at the end instead.
#
#   scripts/demo.sh                 # 3 regions, left up
#   scripts/demo.sh --regions 5     # 5 regions in a ring with chords (up to 10)
#   scripts/demo.sh --down          # tear down at the end
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"

regions=3
teardown=0
while [ $# -gt 0 ]; do
    case "$1" in
        --regions) regions="$2"; shift 2 ;;
        --regions=*) regions="${1#*=}"; shift ;;
        --down) teardown=1; shift ;;
        -h|--help) sed -n '2,11p' "$0"; exit 0 ;;
        *) echo "demo.sh: unknown argument $1 (--regions N, --down)" >&2; exit 2 ;;
    esac
done

bash scripts/bootstrap.sh
lab() { cargo xtask lab "$@"; }
step() { printf '\n### %s\n' "$*"; }

step "cargo xtask lab down   (whatever an earlier run left)"
lab down
step "cargo xtask lab up --regions $regions"
lab up --regions "$regions"
step "cargo xtask lab status"
lab status
step "cargo xtask lab traffic   (every pair of regions)"
lab traffic --seconds 1

# The first link: us-east-1 -- eu-west-1 in the default lab.
if [ "$regions" = 3 ]; then a=us-east-1; b=eu-west-1; else a=region-1; b=region-2; fi
step "cargo xtask lab fail $a $b   (silent cut: the agents see the probes go unanswered)"
lab fail "$a" "$b"
step "cargo xtask lab traffic $a $b   (and back) while the link is cut"
lab traffic "$a" "$b" --seconds 1
lab traffic "$b" "$a" --seconds 1
step "cargo xtask lab heal $a $b"
lab heal "$a" "$b"
step "cargo xtask lab traffic $a $b   after the heal"
lab traffic "$a" "$b" --seconds 1
# g1 is the first region's gateway. Its fast path samples one forwarded packet in 10 (the
# lab's [flows] sample_every) into a ring buffer its agent reads.
step "dwcp show flows   ($a's gateway: the heaviest flows of its sampled packets)"
target/debug/dwcp --socket /run/dwcp-lab/g1.sock show flows
step "dwcp show classes   ($a's gateway: per QoS class)"
target/debug/dwcp --socket /run/dwcp-lab/g1.sock show classes

if [ "$teardown" = 1 ]; then
    step "cargo xtask lab down"
    lab down
    exit 0
fi
cat <<EOF

### The lab is still up. Look around:
  cargo xtask lab status                      # every agent's links, routes, tunnels, counters
  target/debug/dwcp --socket /run/dwcp-lab/g1.sock show routes     # one gateway's agent
  target/debug/dwcp --socket /run/dwcp-lab/g1.sock events          # follow its events
  target/debug/dwcp --socket /run/dwcp-lab/g1.sock show flows      # its top flows
  ip netns exec dwcp-lab-g1 curl -s 127.0.0.1:9470/metrics        # its Prometheus metrics
  cargo xtask lab fail $a $b  /  cargo xtask lab heal $a $b
  cargo xtask lab traffic [FROM TO]
  tail -f /run/dwcp-lab/g1.log                # the agent's log
### and remove it (namespaces, agents, pins, /run/dwcp-lab):
  cargo xtask lab down
EOF
