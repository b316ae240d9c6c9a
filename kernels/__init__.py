"""Graph pieces that run inside the exported model: pooling/score heads, fusions, quantization.

Used at export time only (needs the ``onnx`` package); the runtime never imports this package.
"""
