"""Deployment: SavedModel / ONNX export and the TF Serving clients."""
