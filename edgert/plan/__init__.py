"""Planning, as pure functions of an artifact's description: what a DRAM budget keeps resident and
what streams (dense layers, experts, neuron bundles), how the caches behave on the compiler's
traces, and the cost model's predicted speed. No threads, ctypes or file I/O."""
