#!/bin/sh
# SageMaker starts a training job with `docker run IMAGE train` and an endpoint or transform job with
# `docker run IMAGE serve`; anything else runs as a plain command (e.g. `docker run IMAGE bash`).
set -e
case "$1" in
  train|serve) cmd="$1"; shift; exec "$(dirname "$0")/$cmd" "$@" ;;
  "") echo "usage: IMAGE train | IMAGE serve | IMAGE <command>" >&2; exit 2 ;;
  *) exec "$@" ;;
esac
