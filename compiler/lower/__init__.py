"""TVM: building a target's library with its toolchain, and the CPU pipeline and schedules that
compile ONNX networks."""
