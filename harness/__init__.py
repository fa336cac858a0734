"""Measuring a pruned model: loading, execution modes and latency, GEMM tracing, quality, fingerprint, checkpoints."""
