#!/bin/bash
# User-space instructions per small file of the whole `ftx send` (sealed TCP, keys mode, --json),
# counted by valgrind's callgrind on the sender only (the receiver runs at full speed): unlike CPU
# time, the figure does not move with the load of a shared machine, so trees compare A/B one
# after the other.  Start-up cancels out: (Ir of a send of 2N files - Ir of N files) / N, files of
# 0-2 KiB, 100 per directory (the tiny set of bench_files.py).
#
#     benchmarks/instructions_send.sh [TREE] [N]     # TREE: an ftx source tree (default: this one)
#
# Needs valgrind.  About a minute for N = 2000.
set -e
HERE=$(cd "$(dirname "$0")" && pwd)
TREE=${1:-$(dirname "$HERE")}
N=${2:-2000}
PY=${PYTHON:-python3}
WORK=$(mktemp -d /dev/shm/ftx-instr-send.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
export XDG_CONFIG_HOME="$WORK/cfg"
"$PY" - "$WORK" "$N" <<'PYEOF'
import os, random, sys
work, n = sys.argv[1], int(sys.argv[2])
rng = random.Random(13)
pool = os.urandom(4096)
for count in (n, 2 * n):
    for i in range(count):
        d = os.path.join(work, f"src{count}", f"d{i // 100:05}")
        os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, f"f{i:07}.bin"), "wb") as f:
            size = rng.randint(0, 2048)
            start = rng.randint(0, 2048)
            f.write(pool[start:start + size])
PYEOF
cd "$TREE"
mkdir -p "$XDG_CONFIG_HOME"
PYTHONPATH="$TREE" "$PY" -c "
import os
from ftx.credentials import config_dir, load_identity, public_line
ident = load_identity(os.path.join(config_dir(), 'identity'))  # keys mode, as users run it: it authorizes itself
with open(os.path.join(config_dir(), 'authorized_keys'), 'w') as f:
    f.write(public_line(ident.public, 'benchmark') + '\\n')
"
ir() {
    rm -rf "$WORK/dst" && mkdir "$WORK/dst"
    PYTHONPATH="$TREE" "$PY" -m ftx receive --port 0 --listen 127.0.0.1 --dir "$WORK/dst" --json --once --no-udp \
        > "$WORK/recv.out" 2>/dev/null &
    local rp=$! port=""
    for _ in $(seq 200); do
        port=$("$PY" -c 'import json,sys; print(json.loads(open(sys.argv[1]).readline())["port"])' "$WORK/recv.out" \
               2>/dev/null) && break
        sleep 0.05
    done
    PYTHONPATH="$TREE" valgrind --tool=callgrind --callgrind-out-file=/dev/null "$PY" -m ftx send "$WORK/src$1" \
        "127.0.0.1:$port" --json --no-progress 2>&1 >/dev/null | sed -n 's/.*Collected : //p'
    wait $rp
}
ir "$N" >/dev/null  # warm: byte-compiled modules, known_hosts written
a=$(ir "$N")
b=$(ir $((2 * N)))
echo "$TREE: $(( (b - a) / N )) user-space instructions per small file (ftx send, sealed TCP, $N files)"
