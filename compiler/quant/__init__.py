"""Quantization: the named schemes, the uniform and HLQ quantizers, and bit allocation under a
budget."""
