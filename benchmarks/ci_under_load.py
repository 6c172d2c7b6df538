"""Run `bash .ci/run` in fresh clones of this repository's HEAD, each beside a CPU-bound load on every core, and
print each run's result and wall time: the proof that the suite passes whatever else the machine is doing.

    python benchmarks/ci_under_load.py [--runs 5] [--load 2] [--work /tmp/tipsprog-ci]

Each clone gets ../shared as CI does (a link to this checkout's ../shared) and builds its own .venv.
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


def ci_run(clone: Path, log: Path) -> tuple[int, float, str]:
    """Exit code, wall seconds and pytest's closing line of `bash .ci/run` in `clone`."""
    started = time.monotonic()
    with open(log, "w", encoding="utf-8") as output:
        code = subprocess.run(["bash", ".ci/run"], cwd=clone, stdout=output, stderr=subprocess.STDOUT,
                              stdin=subprocess.DEVNULL, env={**os.environ, "CI": "true"}).returncode
    seconds = time.monotonic() - started
    lines = [m.group(1) for line in log.read_text(encoding="utf-8").splitlines() if (m := SUMMARY.match(line.strip()))]
    return code, seconds, lines[-1] if lines else "no pytest summary"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--load", type=int, default=os.cpu_count() or 2, help="busy processes beside each run")
    parser.add_argument("--work", type=Path, default=Path("/tmp/tipsprog-ci"))
    args = parser.parse_args()
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPOSITORY, capture_output=True, text=True).stdout.strip()
    print(f"commit {commit}: {args.runs} runs of .ci/run in fresh clones, {args.load} busy processes beside each", flush=True)
    failures = 0
    for run in range(1, args.runs + 1):
        clone = fresh_clone(args.work, run)
        load = busy_loops(args.load)
        try:
            code, seconds, summary = ci_run(clone, args.work / f"run-{run}.log")
        finally:
            stop(load)
        failures += code != 0
        print(f"run {run}: exit {code}, {seconds:.0f} s wall (environment build + tests): {summary}", flush=True)
    print(f"{args.runs - failures} of {args.runs} runs green")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
