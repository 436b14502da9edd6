"""Run one fuzz target: coverage-guided with atheris (libFuzzer) when it is installed,
else a seeded mutation loop over the same seeds (so the check never silently vanishes).

    python -m tests.fuzz.run TARGET [--seconds N | --runs N] [--corpus DIR] [--artifacts DIR]
                                    [--no-atheris] [-- extra libFuzzer flags]

TARGET is one of tests.fuzz.targets.TARGETS, or "all" (each in turn, N seconds each).
Seeds are generated from real traffic (tests.fuzz.corpus) into a temporary directory;
``--corpus DIR`` keeps what the fuzzer learns in DIR across runs.  A crash leaves its
input as ``crash-*`` in ``--artifacts`` (default: the current directory), prints the
traceback and exits non-zero; replay it with ``python -m tests.fuzz.run TARGET FILE``.
"""

from __future__ import annotations

import argparse
import logging
import os
import random
import sys
import tempfile
import time
import traceback
from pathlib import Path

NAMES = ("tcp_receiver", "tcp_storage", "tcp_sender", "udp_receiver", "udp_sender", "handshake")


def _args(argv):
    p = argparse.ArgumentParser(prog="python -m tests.fuzz.run")
    p.add_argument("target", choices=NAMES + ("all",))
    p.add_argument("inputs", nargs="*", help="replay these files instead of fuzzing")
    p.add_argument("--seconds", type=float, default=None)
    p.add_argument("--runs", type=int, default=None)
    p.add_argument("--corpus", type=Path, default=None, help="keep the evolving corpus here")
    p.add_argument("--artifacts", type=Path, default=Path("."))
    p.add_argument("--no-atheris", action="store_true", help="use the plain mutation loop")
    p.add_argument("--seed", type=int, default=None, help="fixed random seed (default: a fresh one)")
    extra = []
    if "--" in argv:
        i = argv.index("--")
        argv, extra = argv[:i], argv[i + 1 :]
    a = p.parse_args(argv)
    a.libfuzzer = extra  # after --: passed to libFuzzer
    return a


def _replay(target: str, files) -> int:
    from .targets import TARGETS

    for f in files:
        TARGETS[target](Path(f).read_bytes())
        print(f"{f}: ok")
    return 0


# -- fallback: no atheris -------------------------------------------------------------
def _mutate(rng: random.Random, data: bytes, pool: list[bytes]) -> bytes:
    buf = bytearray(data)
    for _ in range(rng.randint(1, 6)):
        op = rng.randrange(7)
        pos = rng.randrange(len(buf) + 1)
        if op == 0 and buf:
            buf[pos % len(buf)] ^= 1 << rng.randrange(8)
        elif op == 1 and buf:
            buf[pos % len(buf)] = rng.choice((0, 1, 0x7F, 0x80, 0xFF, rng.randrange(256)))
        elif op == 2:
            buf[pos:pos] = rng.randbytes(rng.randint(1, 16))
        elif op == 3 and buf:
            del buf[pos : pos + rng.randint(1, 64)]
        elif op == 4 and len(buf) > 8:
            a = rng.randrange(len(buf) - 4)
            buf[pos:pos] = buf[a : a + rng.randint(1, 256)]
        elif op == 5:
            other = rng.choice(pool)
            a = rng.randrange(len(other) + 1)
            buf[pos:] = other[a:]
        elif op == 6 and len(buf) >= pos + 8:
            buf[pos : pos + 8] = rng.choice((0, 1, 2**31, 2**32 - 1, 2**63, 2**64 - 1)).to_bytes(8, "big")
    return bytes(buf)


def _fallback(target: str, seeds: list[bytes], seconds: float | None, runs: int | None, artifacts: Path,
              seed: int) -> int:
    from .targets import TARGETS

    fn = TARGETS[target]
    rng = random.Random(seed)
    pool = list(seeds) or [b""]
    deadline = time.monotonic() + (seconds if seconds is not None else 1e9)
    n = 0
    while time.monotonic() < deadline and (runs is None or n < runs):
        data = _mutate(rng, rng.choice(pool), pool)
        n += 1
        try:
            fn(data)
        except Exception:
            artifacts.mkdir(parents=True, exist_ok=True)
            path = artifacts / f"crash-{target}-{n}"
            path.write_bytes(data)
            traceback.print_exc()
            print(f"==ftx fuzz: {target} crashed after {n} runs; input written to {path}", file=sys.stderr)
            return 1
        if n % 64 == 0 and len(pool) < 4096:
            pool.append(data)  # no coverage signal: keep a few mutants to mutate further
    from .targets import known_hits

    known = f"; known findings (strict-xfail tests) hit: {known_hits}" if known_hits else ""
    print(f"==ftx fuzz: {target}: {n} runs without a new finding (plain mutation loop, no atheris){known}")
    return 0


# -- atheris ----------------------------------------------------------------------------
def _atheris(target: str, seed_dir: Path, corpus: Path, seconds, runs, artifacts: Path, extra: list[str],
             seed: int | None) -> int:
    import atheris

    from .targets import TARGETS  # instrumented by main()

    fn = TARGETS[target]
    artifacts.mkdir(parents=True, exist_ok=True)
    corpus.mkdir(parents=True, exist_ok=True)
    args = [sys.argv[0], str(corpus), str(seed_dir), f"-artifact_prefix={artifacts}/crash-{target}-",
            "-rss_limit_mb=2048", "-timeout=20", "-max_len=65536", "-len_control=0", "-print_final_stats=1"]
    if seconds is not None:
        args.append(f"-max_total_time={max(1, int(seconds))}")
    if runs is not None:
        args.append(f"-runs={runs}")
    if seed is not None:
        args.append(f"-seed={seed}")
    atheris.Setup(args + extra, fn)
    atheris.Fuzz()  # exits the process
    return 0


def main(argv=None) -> int:
    a = _args(list(sys.argv[1:] if argv is None else argv))
    logging.getLogger("ftx").setLevel(logging.CRITICAL)  # per-file warnings: noise at 1000 inputs/s
    extra = a.libfuzzer
    targets = NAMES if a.target == "all" else (a.target,)
    if a.inputs:
        return max(_replay(t, a.inputs) for t in targets)
    if a.seconds is None and a.runs is None:
        a.seconds = 10.0
    try:
        import atheris  # noqa: F401
        have_atheris = not a.no_atheris
    except ImportError:
        have_atheris = False
    if have_atheris and len(targets) > 1:
        # libFuzzer exits the process at the end of a run: one subprocess per target
        import subprocess

        rc = 0
        for t in targets:
            cmd = [sys.executable, "-m", "tests.fuzz.run", t, "--artifacts", str(a.artifacts)]
            cmd += ["--seconds", str(a.seconds)] if a.seconds is not None else []
            cmd += ["--runs", str(a.runs)] if a.runs is not None else []
            cmd += ["--seed", str(a.seed)] if a.seed is not None else []
            if a.corpus is not None:
                cmd += ["--corpus", str(a.corpus / t)]
            rc = max(rc, subprocess.call(cmd + (["--", *extra] if extra else [])))
        return rc
    if have_atheris:
        import atheris

        with atheris.instrument_imports(include=["ftx"]):  # coverage of ftx (imported first here)
            from . import corpus as seeds_mod
    else:
        from . import corpus as seeds_mod

    with tempfile.TemporaryDirectory(prefix="ftx-fuzz-") as tmp:
        seed_dirs = seeds_mod.write(Path(tmp) / "seeds")
        for t in targets:
            if have_atheris:
                work = a.corpus if a.corpus is not None else Path(tmp) / "corpus" / t
                return _atheris(t, seed_dirs[t], work, a.seconds, a.runs, a.artifacts, extra, a.seed)
            seeds = [p.read_bytes() for p in sorted(seed_dirs[t].iterdir())]
            if a.corpus is not None and a.corpus.is_dir():
                seeds += [p.read_bytes() for p in sorted(a.corpus.iterdir()) if p.is_file()]
            rc = _fallback(t, seeds, a.seconds, a.runs, a.artifacts, 1 if a.seed is None else a.seed)
            if rc:
                return rc
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    sys.exit(main())
