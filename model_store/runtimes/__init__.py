"""Running a version's compiled graphs: where they live in a version, the exporter, and the
ONNX Runtime, OpenVINO and torch runtimes."""
