"""Allow `python -m tipsprog`."""

from tipsprog.cli import app

app()
