"""Serving images: a model version's build context (ONNX or native bundle) and the checks that it serves."""
