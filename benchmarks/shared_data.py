"""Where the benchmarks find the project's shared data (../shared beside the checkout, as in CI)."""

from pathlib import Path

REAL_CT = Path(__file__).resolve().parents[2] / "shared" / "data" / "real-ct" / "totalsegmentator-example"
