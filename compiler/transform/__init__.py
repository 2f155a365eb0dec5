"""Transforms of a model before quantization: calibration, dense-to-MoE (--moefy) and FFN
sparsity (--sparse-ffn)."""
