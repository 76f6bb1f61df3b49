#!/usr/bin/env bash
# Clients people use (issue 15): the OpenAI Node SDK (npm `openai`) and headless Chromium on the
# pages the server carries. Installs what it needs: Debian's chromium (apt) and the npm packages
# (into the build folder's npm cache, pinned majors); skipped (exit 77) where neither the
# package nor the registry can be reached. Two supervised servers: 1 rank (SDK, chat page) and
# 3 ranks (pipeline view). Screenshots go to $TERN_BUILD_DIR/screenshots.
set -euo pipefail
: "${TERNPIPE:?}" "${TERN_SOURCE_DIR:?}" "${TERN_BUILD_DIR:?}"
source "$TERN_SOURCE_DIR/tests/fault/faults.sh"
model=$TERN_SOURCE_DIR/models/tinystories-bitnet.gguf
here=$TERN_SOURCE_DIR/tests/web
shots=$TERN_BUILD_DIR/screenshots
npmdir=$TERN_BUILD_DIR/npm
tmp=$(mktemp -d)
svs=()
cleanup() {
  for p in "${svs[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  sleep 1
  for p in "${svs[@]}"; do kill -KILL -- "-$p" 2>/dev/null || true; done
  rm -rf "$tmp"
}
trap cleanup EXIT
command -v node >/dev/null && command -v npm >/dev/null || { echo "SKIP: no node/npm"; exit 77; }
if ! command -v chromium >/dev/null; then
  sudo_cmd=""
  [ "$(id -u)" -ne 0 ] && sudo_cmd="sudo -n"
  DEBIAN_FRONTEND=noninteractive timeout 600 $sudo_cmd apt-get install -y -qq chromium >"$tmp/apt.log" 2>&1 ||
    { echo "SKIP: cannot install chromium: $(tail -1 "$tmp/apt.log")"; exit 77; }
fi
mkdir -p "$npmdir" "$shots"
if [ ! -d "$npmdir/node_modules/openai" ] || [ ! -d "$npmdir/node_modules/puppeteer-core" ]; then
  (cd "$npmdir" && [ -f package.json ] || echo '{"name":"ternpipe-web-tests","private":true,"type":"module"}' >package.json)
  timeout 300 npm install --prefix "$npmdir" --no-audit --no-fund --silent openai@4 puppeteer-core@23 >"$tmp/npm.log" 2>&1 ||
    { echo "SKIP: cannot install the npm packages: $(tail -2 "$tmp/npm.log" | tr '\n' ' ')"; exit 77; }
fi
# the scripts resolve their imports from the cache
cp "$here/sdk.mjs" "$here/pages.mjs" "$npmdir/"

start_sv "$tmp/one.log" -m "$model" --threads 1
svs+=("$sv")
url1=$url
node "$npmdir/sdk.mjs" "$url1" || { tail -20 "$tmp/one.log"; exit 1; }
start_sv "$tmp/three.log" -m "$model" --threads 1 --ranks 3
svs+=("$sv")
url3=$url
node "$npmdir/pages.mjs" "$url1" "$url3" "$shots" || { tail -20 "$tmp/one.log"; exit 1; }
for f in chat.png chat-stopped.png pipeline.png; do
  [ -s "$shots/$f" ] || { echo "FAIL: no screenshot $f"; exit 1; }
done
echo "ok screenshots: $(cd "$shots" && ls | tr '\n' ' ')in $shots"
echo "web: all passed"
