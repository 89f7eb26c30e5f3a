"""The files of an ONNX artifact, one home for their names (ONNX Runtime and OpenVINO both read them)."""

MODEL_FILE = "model.onnx"
EXTERNAL_DATA_FILE = "model.onnx_data"
# Models larger than this keep their weights in one external data file beside the graph
# (protobuf cannot hold more than 2 GB; a separate file also loads by mmap).
EXTERNAL_DATA_THRESHOLD = 1 << 30
