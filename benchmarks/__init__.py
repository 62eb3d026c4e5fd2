"""Benchmarks of llmcore: kernel microbenchmarks (``python -m benchmarks.kernels``) and
training throughput (``python -m benchmarks.throughput``); results in ``benchmarks/RESULTS.md``.
"""
