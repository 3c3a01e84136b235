#!/usr/bin/env sh
# Remove from the server image's venv what the server never loads, then prove it still serves.
# For the Docker build only (never a dev venv: the tests and training need what this removes).
#   - the test suites packages ship (numpy's alone is ~20 MB);
#   - onnxruntime's C-API library: its Python binding has the runtime linked in (35 MB);
#   - onnxruntime's offline tools, which training uses from its own venv (quantization,
#     transformers, tools, datasets, backend);
#   - numpy's build-time tools (f2py, distutils, the PyInstaller hook);
#   - Pillow's AVIF codec (not a format the server accepts: model_store.ACCEPTED_FORMATS) and its
#     font renderer (freetype, harfbuzz, brotli, png16: the server draws no text); Pillow's
#     plugin loader skips a plugin whose codec is missing;
#   - with the openvino extra (BAP_EXTRAS=openvino): every OpenVINO plugin but the CPU one (GPU,
#     NPU, AUTO, HETERO, batching) and the GPU plugin's kernel cache (libs/cache.json), every
#     model frontend but ONNX and IR, its C API, headers, CMake files and converter tools (the
#     server reads ONNX files onto the CPU, nothing else): 180 -> 109 MB;
#   - the symbols of the extension modules, where `strip` is installed (the Dockerfile's build
#     stage adds binutils): uvloop alone goes from 13.6 to 1.6 MB.
# The check loads the bundled model exactly as the server does (sha256-verified, every domain's
# graph and the mixed one run once): a package upgrade that needs a removed file fails the build.
set -eu
site=$(echo "$1"/lib/python3*/site-packages)
find "$site" -depth -type d -name tests -path '*/numpy/*' -exec rm -rf {} +
find "$site" -depth -type d -name tests -path '*/onnxruntime/*' -exec rm -rf {} +
rm -f "$site"/onnxruntime/capi/libonnxruntime.so*
for tool in quantization transformers tools datasets backend; do rm -rf "$site/onnxruntime/$tool"; done
rm -rf "$site"/numpy/f2py "$site"/numpy/distutils "$site"/numpy/_pyinstaller "$site"/bin/f2py "$1"/bin/f2py
rm -f "$site"/PIL/_avif.*.so "$site"/pillow.libs/libavif-*
rm -f "$site"/PIL/_imagingft.*.so "$site"/pillow.libs/libfreetype-* "$site"/pillow.libs/libharfbuzz-* \
  "$site"/pillow.libs/libpng16-* "$site"/pillow.libs/libbrotli*
ov="$site/openvino"
if [ -d "$ov" ]; then
  for lib in intel_gpu_plugin intel_npu_plugin auto_plugin auto_batch_plugin hetero_plugin c \
    tensorflow_frontend tensorflow_lite_frontend paddle_frontend pytorch_frontend jax_frontend \
    gguf_frontend; do
    rm -f "$ov/libs/libopenvino_$lib".so*
  done
  rm -rf "$ov/include" "$ov/cmake" "$ov/tools" "$ov/libs/tbb.pc" "$ov/libs/cache.json"
fi
if command -v strip >/dev/null; then
  # extension modules only: the libraries auditwheel vendored into *.libs/ were rewritten by
  # patchelf, and stripping them breaks their ELF layout (numpy: "not page-aligned")
  find "$1" -type f \( -name '*.cpython-*.so' -o -name '*.abi3.so' \) -not -path '*.libs/*' \
    -exec strip --strip-unneeded {} +
else
  echo "slim_venv: no strip (binutils) here, shared libraries keep their symbols"
fi
"$1/bin/python" -c "
import io, httptools, uvloop
from PIL import Image
import server.app
from model_store.preprocess import ACCEPTED_FORMATS, decode_image
from server.config import Settings
from server.runner import load_served
for fmt in ACCEPTED_FORMATS:  # every accepted format still decodes after the removals above
    out = io.BytesIO()
    Image.new('RGB', (40, 30), (200, 30, 90)).save(out, fmt)
    decode_image(out.getvalue(), 10**6)
import importlib.util
runtimes = ['onnx'] + (['openvino'] if importlib.util.find_spec('openvino') else [])
for runtime in runtimes:
    served = load_served(Settings(runtime=runtime))
print('slim venv decodes', ', '.join(ACCEPTED_FORMATS), 'and serves', served.manifest.name,
      served.manifest.version, 'on', ' and '.join(runtimes))
"
