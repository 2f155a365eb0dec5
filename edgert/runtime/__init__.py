"""Running a model on the device: the executor (the C forward pass), the flash reader, the layer
streamer, the expert and neuron caches, kernel bindings, the ONNX executor, generation,
perplexity and the tokenizer. Needs numpy and the artifact's C library; never TVM's compiler."""
