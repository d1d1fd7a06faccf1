"""make bench: every performance figure of tcpstack.tuning (python -m bench.run from the repository root)."""
