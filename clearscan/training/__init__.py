"""Training code for ClearScan's bundled models (needs the ``train`` extra: torch, onnx)."""
