"""Benchmarks (`fabtier bench ...`): each prints its figures next to a baseline measured in
the same run; with --json the last line is one JSON object."""
