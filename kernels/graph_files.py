"""Reading and writing ONNX graph files, large ones included.

protobuf cannot serialise one message past 2 GB: a graph with more weights than
``EXTERNAL_DATA_BYTES`` (e.g. a decoder reranker's fp32 weights) keeps them in one file beside
it, ``<name>.data``; ONNX Runtime and ``onnx.load`` find it there.
"""

from __future__ import annotations

from pathlib import Path

import onnx

EXTERNAL_DATA_BYTES = 1 << 30


def save_graph(model: onnx.ModelProto, path: str | Path) -> None:
    path = Path(path)
    weight_bytes = sum(len(t.raw_data) for t in model.graph.initializer)
    if weight_bytes > EXTERNAL_DATA_BYTES:
        onnx.save(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                  location=path.name + ".data", size_threshold=1024)
    else:
        onnx.save(model, str(path))


def graph_inputs(path: str | Path) -> list[str]:
    """Names of the graph's inputs (its weights are not read)."""
    return [i.name for i in onnx.load(str(path), load_external_data=False).graph.input]
