"""Run `bash .ci/run` in fresh clones of this repository's HEAD, each beside a CPU-bound load on every core, and
print each run's result and wall time: the proof that the suite passes whatever else the machine is doing.

    python benchmarks/ci_under_load.py [--runs 5] [--load 2] [--work /tmp/tipsprog-ci] [--together]

Each clone gets ../shared as CI does (a link to this checkout's ../shared) and builds its own .venv. With
--together the runs start at once, so each also runs beside the others (a harder load, in a fraction of the time).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parents[1]
SUMMARY = re.compile(r"^=*\s*(\d+ passed.*?)\s*=*$")


def busy_loops(count: int) -> list[subprocess.Popen]:
    """`count` processes that spin on one core each until stopped."""
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(count)]


def stop(processes: list[subprocess.Popen]) -> None:
    """Stop the load processes and reap them."""
    for process in processes:
        process.kill()
    for process in processes:
        process.wait()


def fresh_clone(work: Path, run: int) -> Path:
    """A new clone of HEAD at work/run-N/main with ../shared beside it, as CI lays it out."""
    root = work / f"run-{run}"
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    subprocess.run(["git", "clone", "-q", str(REPOSITORY), str(root / "main")], check=True)
    (root / "shared").symlink_to(REPOSITORY.parent / "shared")
    return root / "main"


def start_ci(clone: Path, log: Path) -> subprocess.Popen:
    """`bash .ci/run` in `clone`, as CI runs it, its output into `log`."""
    with open(log, "w", encoding="utf-8") as output:
        return subprocess.Popen(
            ["bash", ".ci/run"],
            cwd=clone,
            stdout=output,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, "CI": "true"},
        )


def summary(log: Path) -> str:
    """pytest's closing line in a run's log."""
    lines = [m.group(1) for line in log.read_text(encoding="utf-8").splitlines() if (m := SUMMARY.match(line.strip()))]
    return lines[-1] if lines else "no pytest summary"


def run_all(work: Path, numbers: list[int]) -> int:
    """Start the numbered runs at once, wait for each, print its result; return how many failed."""
    started = time.monotonic()
    runs = {number: start_ci(fresh_clone(work, number), work / f"run-{number}.log") for number in numbers}
    failures = 0
    for number, process in runs.items():
        code = process.wait()
        failures += code != 0
        print(
            f"run {number}: exit {code}, {time.monotonic() - started:.0f} s wall (environment build + tests): "
            f"{summary(work / f'run-{number}.log')}",
            flush=True,
        )
    return failures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--load", type=int, default=os.cpu_count() or 2, help="busy processes beside each run")
    parser.add_argument("--work", type=Path, default=Path("/tmp/tipsprog-ci"))
    parser.add_argument("--together", action="store_true", help="start all runs at once")
    args = parser.parse_args()
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=REPOSITORY, capture_output=True, text=True
    ).stdout.strip()
    print(
        f"commit {commit}: {args.runs} runs of .ci/run in fresh clones{' at once' if args.together else ''}, "
        f"{args.load} busy processes beside each",
        flush=True,
    )
    batches = [list(range(1, args.runs + 1))] if args.together else [[run] for run in range(1, args.runs + 1)]
    failures = 0
    for batch in batches:
        load = busy_loops(args.load)
        try:
            failures += run_all(args.work, batch)
        finally:
            stop(load)
    print(f"{args.runs - failures} of {args.runs} runs green")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
