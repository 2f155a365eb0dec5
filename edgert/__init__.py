"""edgert: run large language models on ARM edge devices within a hard DRAM budget."""

__version__ = "0.1.0"
