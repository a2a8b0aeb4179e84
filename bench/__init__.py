"""gradtap benchmarks: gradtap (onnxruntime) against captum, pytorch-grad-cam and torch autograd."""
