"""Measuring: llama-bench-style benchmarks, profiles and their HTML report, the kernel bench."""
