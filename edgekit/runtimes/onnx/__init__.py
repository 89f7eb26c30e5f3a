"""ONNX graph code that ONNX Runtime and OpenVINO share: the streamed MatMulNBits builder, the
optimum export, and the file names of an ONNX artifact. Imports floors 1-4, never a runtime.
"""
