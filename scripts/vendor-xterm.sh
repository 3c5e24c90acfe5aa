#!/usr/bin/env bash
# Refreshes the dashboard's vendored xterm.js from the npm registry at the
# pinned versions, and verifies it.
#
#   scripts/vendor-xterm.sh          download, verify, copy into web/vendor/
#   scripts/vendor-xterm.sh --check  verify web/vendor/ against web/vendor/SHA256SUMS (offline)
#
# Verification: each tarball's sha512 must equal both the integrity pinned
# below and the registry's dist.integrity (and its sha1 the registry's
# dist.shasum); the files copied out of it are then recorded in
# web/vendor/SHA256SUMS, which --check (run by the Go tests through
# web.TestVendored) compares against what is committed. To move to a new
# version: change the pins, run this script, review the diff, commit.
set -euo pipefail
cd "$(dirname "$0")/.."

# name version sri-integrity
PINS=(
  "@xterm/xterm 6.0.0 sha512-TQwDdQGtwwDt+2cgKDLn0IRaSxYu1tSUjgKarSDkUM0ZNiSRXFpjxEsvc/Zgc5kq5omJ+V0a8/kIM2WD3sMOYg=="
  "@xterm/addon-fit 0.11.0 sha512-jYcgT6xtVYhnhgxh3QgYDnnNMYTcf8ElbxxFzX0IZo+vabQqSPAjC3c1wJrKB5E19VwQei89QCiZZP86DCPF7g=="
)
# package-relative file -> web/vendor path
declare -A FILES=(
  ["@xterm/xterm:lib/xterm.mjs"]="xterm/xterm.mjs"
  ["@xterm/xterm:css/xterm.css"]="xterm/xterm.css"
  ["@xterm/xterm:LICENSE"]="xterm/LICENSE"
  ["@xterm/addon-fit:lib/addon-fit.mjs"]="addon-fit/addon-fit.mjs"
  ["@xterm/addon-fit:LICENSE"]="addon-fit/LICENSE"
)
VENDOR=web/vendor

if [ "${1:-}" = "--check" ]; then
  (cd "$VENDOR" && sha256sum --quiet -c SHA256SUMS)
  echo "vendor-xterm: web/vendor matches SHA256SUMS"
  exit 0
fi

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
for pin in "${PINS[@]}"; do
  read -r name version want <<<"$pin"
  reg_integrity=$(npm view "$name@$version" dist.integrity)
  reg_shasum=$(npm view "$name@$version" dist.shasum)
  if [ "$reg_integrity" != "$want" ]; then
    echo "vendor-xterm: $name@$version: the registry's integrity $reg_integrity is not the pinned $want" >&2
    exit 1
  fi
  dir="$tmp/${name//\//_}"
  mkdir -p "$dir"
  file=$(cd "$dir" && npm pack "$name@$version" --silent)
  got="sha512-$(openssl dgst -sha512 -binary "$dir/$file" | base64 -w0)"
  got_sha1=$(sha1sum "$dir/$file" | cut -d' ' -f1)
  if [ "$got" != "$want" ] || [ "$got_sha1" != "$reg_shasum" ]; then
    echo "vendor-xterm: $name@$version: tarball $got (sha1 $got_sha1) does not match $want (sha1 $reg_shasum)" >&2
    exit 1
  fi
  tar xzf "$dir/$file" -C "$dir"
  pkgver=$(node -p "require('$dir/package/package.json').version")
  if [ "$pkgver" != "$version" ]; then
    echo "vendor-xterm: $name: package.json says $pkgver, want $version" >&2
    exit 1
  fi
  echo "vendor-xterm: $name@$version verified ($want)"
done

rm -rf "$VENDOR/xterm" "$VENDOR/addon-fit"
for key in "${!FILES[@]}"; do
  name=${key%%:*}
  rel=${key#*:}
  dst="$VENDOR/${FILES[$key]}"
  mkdir -p "$(dirname "$dst")"
  cp "$tmp/${name//\//_}/package/$rel" "$dst"
done
{
  echo "# web/vendor, written by scripts/vendor-xterm.sh from:"
  for pin in "${PINS[@]}"; do echo "#   $pin"; done
  (cd "$VENDOR" && find xterm addon-fit -type f | LC_ALL=C sort | xargs sha256sum)
} >"$VENDOR/SHA256SUMS"
echo "vendor-xterm: web/vendor updated; review and commit it"
