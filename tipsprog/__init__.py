"""tipsprog: CT + clinical prognosis after TIPS."""

__version__ = "0.1.0"
