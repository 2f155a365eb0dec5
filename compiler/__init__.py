"""edgert's offline compiler (installed as ``edgert.compiler``): frontends, quantization, planning,
TVM lowering and packaging. The device side never imports it at module import time."""
