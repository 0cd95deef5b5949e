"""Benchmarks: commands that print numbers and write JSON with the machine they ran on."""
