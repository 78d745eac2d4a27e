"""Shared machinery of the notification benchmarks: fixtures, processes, the load generator, the references."""
