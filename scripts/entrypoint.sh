#!/usr/bin/env sh
# The server image's entrypoint: seed the store volume with the bundled versions it lacks, then
# become the server (exec: SIGTERM reaches it and it drains).
# The image holds the bundled model once, under /app/model_store/bundled; an empty volume gets
# all of it on the first start, and a newer image adds its new versions without moving CURRENT
# (`set-current` serves one). A model name the image does not bundle is served as the store has it.
set -u
bundled=$(cd "$(dirname "$0")/.." && pwd)/model_store/bundled  # /app/... in the image
if [ -d "$bundled/${BAP_MODEL:-embedded}" ]; then
  python -m model_store seed --from "$bundled" \
    || echo "entrypoint: seeding ${BAP_STORE:-the store} failed (above); serving what it holds" >&2
fi
exec python -m server "$@"
