"""The Comparison Detector model library (networks, heads, box ops, configs)."""
