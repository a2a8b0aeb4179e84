"""gradtap.runtime: explanations from an augmented ONNX graph, with onnxruntime, numpy and OpenCV."""
