"""Fuzz the .hvz reader and decoder: mutated archives, each read, listed and decompressed in
a child process, counting uncaught exceptions, runs over 2 GB of memory and runs over 10 s.

The mutations are those of tests/test_archive_fuzz.py (half raw, half rebuilt with valid
lengths and checksums so that they reach the field parser and the entropy decoder), on small
archives written by the codec under test. Each case runs in a forked child (Linux), whose
peak RSS ``wait4`` reports; a child is capped at 4 GiB of address space over its parent's
and at 60 s, so a runaway case is counted rather than taking the machine down.

    python benchmarks/fuzz_archive.py --cases 10000                  # the tiny test codec
    python benchmarks/fuzz_archive.py --cases 500 --model photo      # the bundled photo codec
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import signal
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path

# tests/ holds the mutations and the case runner that this shares with the test suite.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from tests.test_archive_fuzz import mutations, run_case, small_archives  # noqa: E402

RSS_LIMIT = 2 * 2**30
SECONDS_LIMIT = 10.0
CHILD_EXTRA_ADDRESS_SPACE = 4 * 2**30
CHILD_TIMEOUT_S = 60


def _address_space() -> int:
    with open("/proc/self/status") as status:
        line = next(line for line in status if line.startswith("VmSize:"))
    return int(line.split()[1]) * 1024


def run_in_child(pipe, data: bytes, folder: Path) -> tuple[str, float, int]:
    """(outcome, seconds, peak RSS in bytes) of ``run_case`` in a forked child. The outcome is
    'decoded', 'refused', 'uncaught TYPE: message' or 'killed by signal N'."""
    read_end, write_end = os.pipe()
    started = time.perf_counter()
    pid = os.fork()
    if pid == 0:  # the child: run the case, report in one line, never return
        os.close(read_end)
        signal.alarm(CHILD_TIMEOUT_S)  # the default action ends the process
        limit = _address_space() + CHILD_EXTRA_ADDRESS_SPACE
        resource.setrlimit(resource.RLIMIT_AS, (limit, resource.RLIM_INFINITY))
        try:
            outcome = run_case(pipe, data, folder)
        except BaseException as error:  # noqa: BLE001  (counting these is the point)
            outcome = f"uncaught {type(error).__name__}: {error}"[:300]
        os.write(write_end, outcome.encode())
        os._exit(0)
    os.close(write_end)
    _, status, usage = os.wait4(pid, 0)
    seconds = time.perf_counter() - started
    with os.fdopen(read_end, "rb") as report:
        outcome = report.read().decode(errors="replace")
    if os.WIFSIGNALED(status):
        outcome = f"killed by signal {os.WTERMSIG(status)}"
    return outcome, seconds, usage.ru_maxrss * 1024


def load_pipe(model: str):
    if model == "tiny":
        from tests.conftest import tiny_codec

        return tiny_codec()
    from hvae.loading import load_codec

    pipe = load_codec(model)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--model", default="tiny", help="'tiny' (the test codec) or a codec")
    parser.add_argument("--json", help="also write the counts and the worst cases here")
    args = parser.parse_args()
    # One thread in the parent: forked children then never inherit a thread pool they lack.
    torch.set_num_threads(1)
    pipe = load_pipe(args.model)
    archives = small_archives(pipe)
    rows: dict[str, Counter] = defaultdict(Counter)
    worst: dict[str, list] = defaultdict(list)
    peak_rss, longest = defaultdict(int), defaultdict(float)
    uncaught = Counter()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="hvz-fuzz-") as scratch:
        for i, (kind, data) in enumerate(mutations(archives, args.seed, args.cases)):
            outcome, seconds, rss = run_in_child(pipe, data, Path(scratch) / "case")
            for key in (kind, "all"):
                row = rows[key]
                row["cases"] += 1
                row[outcome if outcome in ("decoded", "refused") else "uncaught or killed"] += 1
                row["RSS > 2 GB"] += rss > RSS_LIMIT
                row["> 10 s"] += seconds > SECONDS_LIMIT
                peak_rss[key] = max(peak_rss[key], rss)
                longest[key] = max(longest[key], seconds)
            if outcome not in ("decoded", "refused"):
                uncaught[outcome.split(":")[0]] += 1
                worst["uncaught"].append({"case": i, "kind": kind, "outcome": outcome})
            if rss > RSS_LIMIT or seconds > SECONDS_LIMIT:
                worst["heavy"].append({"case": i, "kind": kind, "s": seconds, "rss": rss})
            if (i + 1) % 500 == 0:
                elapsed = time.perf_counter() - started
                print(f"{i + 1}/{args.cases} cases, {elapsed:.0f} s", file=sys.stderr, flush=True)
    columns = ["cases", "decoded", "refused", "uncaught or killed", "RSS > 2 GB", "> 10 s"]
    print(f"model {args.model}, seed {args.seed}, {time.perf_counter() - started:.0f} s\n")
    print("| mutations | " + " | ".join(columns) + " | peak RSS (MB) | longest (s) |")
    print("|---" * (len(columns) + 3) + "|")
    for key in ("raw", "crc-fixed", "all"):
        cells = [str(rows[key][c]) for c in columns]
        print(
            f"| {key} | " + " | ".join(cells) + f" | {peak_rss[key] / 2**20:.0f} | "
            f"{longest[key]:.2f} |"
        )
    for outcome, count in uncaught.most_common():
        print(f"{count} x {outcome}")
    if args.json:
        Path(args.json).write_text(
            json.dumps({"rows": rows, "uncaught": uncaught, "worst": worst}, indent=1)
        )


if __name__ == "__main__":
    main()
