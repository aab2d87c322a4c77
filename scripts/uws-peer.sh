#!/usr/bin/env bash
# Builds the uWebSockets room-chat peer (once) and prints the path of its binary, for
# scripts/peers.sh and scripts/bench.sh --targets.
#
# Usage: scripts/uws-peer.sh [--rooms]
#   --rooms     the rooms peer instead: bench/peers/uws-rooms/uws_chat.cpp, built by the same
#               build.sh in its one-room source's stead (a directory of links), into
#               target/peers/uws-rooms/uwschat: a socket's topic is its upgrade's ?room=
#   -h, --help  this help
#
# Its sources are not in this repository: they are looked for as shared/peers/uws/build.sh
# beside the repository's root or one or two levels above it (../shared, ../../shared), or
# in the directory UWS_PEER_DIR names. build.sh (g++, C++20, uWebSockets and uSockets from the
# archives beside it, no TLS, no zlib) builds target/peers/uws/uwschat, which is kept and
# built again only when a file beside build.sh is newer. uwschat PORT listens on 127.0.0.1,
# subscribes every socket to one topic and publishes every text frame to it, the sender
# included: a raw broadcaster, driven with `chatload --proto raw`.
# Exit status 1, the reason on stderr, when the sources are absent or the build fails.
set -euo pipefail
rooms=0
for a in "$@"; do
  case "$a" in
    --rooms) rooms=1 ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "uws-peer.sh: unknown argument '$a' (see --help)" >&2; exit 2 ;;
  esac
done
cd "$(dirname "$0")/.."
dir=${UWS_PEER_DIR:-}
if [ -z "$dir" ]; then
  for up in .. ../..; do
    if [ -f "$up/shared/peers/uws/build.sh" ]; then dir="$up/shared/peers/uws"; break; fi
  done
fi
if [ -z "$dir" ] || [ ! -f "$dir/build.sh" ]; then
  echo "uws-peer.sh: the uWebSockets peer's sources are absent (no shared/peers/uws/build.sh in ../ or ../../ of $PWD${UWS_PEER_DIR:+, nor in UWS_PEER_DIR=$UWS_PEER_DIR})" >&2
  exit 1
fi
dir=$(cd "$dir" && pwd)
name=uws src=$dir/uws_chat.cpp
[ "$rooms" = 0 ] || name=uws-rooms src=$PWD/bench/peers/uws-rooms/uws_chat.cpp
out=target/peers/$name/uwschat
if [ ! -x "$out" ] || [ -n "$(find "$dir" "$src" -maxdepth 1 -type f -newer "$out" | head -1)" ]; then
  command -v g++ >/dev/null || { echo "uws-peer.sh: g++ is needed to build the uWebSockets peer" >&2; exit 1; }
  echo "uws-peer.sh: building the uWebSockets peer ($name) from $dir" >&2
  # build.sh builds the uws_chat.cpp beside it: give it a directory of links to its own
  # files, with ours in that name.
  links=$(mktemp -d)
  trap 'rm -rf "$links"' EXIT
  for f in "$dir"/*; do ln -s "$f" "$links/"; done
  ln -sf "$src" "$links/uws_chat.cpp"
  bash "$links/build.sh" "target/peers/$name" >&2 || { echo "uws-peer.sh: the build failed" >&2; exit 1; }
fi
echo "$PWD/$out"
