#!/bin/bash
# User-space instructions per small file of the receiver's session (bench_recv_session.py),
# counted by valgrind's callgrind: unlike CPU time, the figure does not move with the load of
# a shared machine, so two trees can be compared A/B one after the other.  The start-up and the
# making of the wire stream cancel out: (Ir of --runs 3 - Ir of --runs 1) / 2 / files.
#
#     benchmarks/instructions_recv_session.sh [TREE] [FILES]     # TREE: an ftx source tree (default: this one)
#     BENCH_ARGS=--daemon benchmarks/instructions_recv_session.sh   # with ftx receive's per-file path
#
# Needs valgrind.  About a minute and a half for 2 000 files.
set -e
HERE=$(cd "$(dirname "$0")" && pwd)
TREE=${1:-$(dirname "$HERE")}
N=${2:-2000}
PY=${PYTHON:-python3}
ir() {
    valgrind --tool=callgrind --callgrind-out-file=/dev/null "$PY" "$TREE/benchmarks/bench_recv_session.py" \
        --runs "$1" --files "$N" --dirs $((N / 100 > 0 ? N / 100 : 1)) $BENCH_ARGS 2>&1 | sed -n 's/.*Collected : //p'
}
a=$(ir 1)
b=$(ir 3)
echo "$TREE: $(( (b - a) / 2 / N )) user-space instructions per small file (receiver session, $N files)"
