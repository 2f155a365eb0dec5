"""ONNX networks: the frontend (operator and shape checks, TVM's Relax importer) and the compile
into an artifact."""
