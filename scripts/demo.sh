#!/usr/bin/env bash
# README's first command: the main job. Sets the machine up if needed, then runs the
# multi-region lab: three regions (us-east-1, eu-west-1, ap-south-1) in network namespaces,
# a real dwcp-agent on each region's gateway, the gateways sharing a cluster store (a real
# three-member etcd cluster in the lab's namespaces), traffic between every pair of regions, a
# link cut (the agents route around it), healed again; then a topology change pushed once and
# seen by every gateway, and a reservation refused because another region's gateway booked
# the link. The lab stays up afterwards so you can look at it (the commands are printed at
# the end); `--down` removes it at the end instead. Any check that fails stops it (exit 1).
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
        -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
        *) echo "demo.sh: unknown argument $1 (--regions N, --down)" >&2; exit 2 ;;
    esac
done

bash scripts/bootstrap.sh
lab() { cargo xtask lab "$@"; }
step() { printf '\n### %s\n' "$*"; }
fail() { printf '\ndemo.sh: FAILED: %s\n' "$*" >&2; exit 1; }
# `dwcp` on region N's gateway (gN), through its agent's API socket.
gw() { local n="$1"; shift; target/debug/dwcp --socket "/run/dwcp-lab/g$n.sock" "$@"; }

step "cargo xtask lab down   (whatever an earlier run left)"
lab down
step "cargo xtask lab up --regions $regions --store etcd   (topology pushed once into the cluster store)"
lab up --regions "$regions" --store etcd
step "cargo xtask lab status"
lab status
step "cargo xtask lab traffic   (every pair of regions)"
lab traffic --seconds 1

# The first link: us-east-1 -- eu-west-1 in the default lab.
# c is the third region: link 2 joins it to b (the ring's second link).
if [ "$regions" = 3 ]; then a=us-east-1; b=eu-west-1; c=ap-south-1; else a=region-1; b=region-2; c=region-3; fi
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

# The cluster store. Every gateway registered itself on a lease and runs the topology that
# `lab up` pushed (generation 1); each gateway's file holds only its own part.
step "dwcp show gateways   (every gateway, as the etcd cluster lists them)"
gw 1 show gateways
next=/run/dwcp-lab/topology-next.toml
awk '/^\[\[link\]\]/ { id = "" } /^link_id = / { id = $3 }
     id == "1" && /^capacity_mbps = / { $0 = "capacity_mbps = 800.0" } { print }' \
    /run/dwcp-lab/topology.toml > "$next"
step "dwcp topology diff $next   ($b's gateway: link 1 down to 800 Mbit/s)"
gw 2 topology diff "$next"
step "dwcp topology push $next   (once, through $b's gateway)"
pushed=$(gw 2 topology push "$next") || fail "the push was refused"
echo "$pushed"
generation=$(sed -n 's/^published topology generation \([0-9]*\) .*/\1/p' <<<"$pushed")
[ -n "$generation" ] || fail "the push published no new generation"
step "every gateway runs generation $generation, with link 1 at 800 Mbit/s"
for n in $(seq 1 "$regions"); do
    deadline=$((SECONDS + 30))
    until [ "$(gw "$n" --json status | jq -r .published_topology_generation)" = "$generation" ] &&
          [ "$(gw "$n" --json show topology | jq -r '.links[] | select(.id == 1) | .capacity_bps')" = 800000000 ]; do
        [ "$SECONDS" -lt "$deadline" ] || fail "g$n does not run generation $generation with link 1 at 800 Mbit/s after 30 s"
        sleep 0.2
    done
    gw "$n" --json status | jq -r '"\(.gateway) (\(.region)): topology generation \(.published_topology_generation), link 1 at 800 Mbit/s"'
done
gw 1 show gateways
step "dwcp reserve add --from $b --to $a --rate 600M --path 1   ($b's gateway books link 1)"
gw 2 reserve add --from "$b" --to "$a" --class bulk --rate 600M --end +1h --path 1 ||
    fail "$b's gateway could not book 600 Mbit/s on link 1"
step "dwcp reserve add --from $c --to $a --rate 600M --path 2,1   ($c's gateway, over the same link 1)"
if refusal=$(gw 3 reserve add --from "$c" --to "$a" --class bulk --rate 600M --end +1h --path 2,1 2>&1); then
    fail "$c's gateway admitted 600 Mbit/s more on link 1 (800 Mbit/s, 640 reservable): $refusal"
fi
echo "$refusal"
grep -q "link 1: 600000000 bit/s requested" <<<"$refusal" || fail "not refused for link 1: $refusal"
step "dwcp show reservations   ($c's gateway: every gateway mirrors the store's reservations)"
deadline=$((SECONDS + 30))
until [ "$(gw 3 --json show reservations | jq length)" = 1 ]; do
    [ "$SECONDS" -lt "$deadline" ] || fail "$c's gateway does not list $b's reservation after 30 s"
    sleep 0.2
done
gw 3 show reservations

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
  target/debug/dwcp --socket /run/dwcp-lab/g2.sock show gateways   # the cluster store's members
  target/debug/dwcp --socket /run/dwcp-lab/g2.sock topology push FILE   # e.g. $next, edited
  tail -f /run/dwcp-lab/g1.log                # the agent's log
### and remove it (namespaces, agents, the etcd cluster, pins, /run/dwcp-lab):
  cargo xtask lab down
EOF
