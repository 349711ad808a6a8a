"""Benchmarks: commands that produce the figures quoted in docs/."""
