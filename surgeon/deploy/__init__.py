"""Deployment: ONNX export checked in onnxruntime (`export`), params / MACs / latency (`measure`)."""
