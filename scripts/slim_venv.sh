#!/usr/bin/env sh
# Remove from the server image's venv what the server never loads, then prove it still serves.
# For the Docker build only (never a dev venv: the tests and training need what this removes).
#   - the test suites packages ship (numpy's alone is ~20 MB);
#   - onnxruntime's C-API library: its Python binding has the runtime linked in (35 MB);
#   - onnxruntime's offline tools, which training uses from its own venv (quantization,
#     transformers, tools, datasets, backend).
# The check loads the bundled model exactly as the server does (sha256-verified, every domain's
# graph and the mixed one run once): a package upgrade that needs a removed file fails the build.
set -eu
site=$(echo "$1"/lib/python3*/site-packages)
find "$site" -depth -type d -name tests -path '*/numpy/*' -exec rm -rf {} +
find "$site" -depth -type d -name tests -path '*/onnxruntime/*' -exec rm -rf {} +
rm -f "$site"/onnxruntime/capi/libonnxruntime.so*
for tool in quantization transformers tools datasets backend; do rm -rf "$site/onnxruntime/$tool"; done
"$1/bin/python" -c "
from server.config import Settings
from server.runner import load_served
served = load_served(Settings(runtime='onnx'))
print('slim venv serves', served.manifest.name, served.manifest.version, 'on onnx')
"
