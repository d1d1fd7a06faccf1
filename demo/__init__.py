"""make demo: real exhaustion on a throwaway fleet, audited, tuned (python -m demo.demo from the repository root)."""
