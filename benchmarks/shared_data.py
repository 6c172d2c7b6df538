"""Where the benchmarks find the project's shared data (../shared beside the checkout, as in CI)."""

from pathlib import Path

SHARED_REAL_CT = Path(__file__).resolve().parents[2] / "shared" / "data" / "real-ct"
REAL_CT = SHARED_REAL_CT / "totalsegmentator-example"
IRCADB = SHARED_REAL_CT / "ircadb-1.1"  # CC BY-NC-ND: read in place, never copied into the project
