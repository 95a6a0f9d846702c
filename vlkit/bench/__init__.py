"""Throughput benchmarking: ``vlkit bench`` (synthetic on-device batches, timing, FLOPs, MFU, breakdown)."""
