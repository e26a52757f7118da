#!/usr/bin/env bash
# pip install to the first answered photo on a fresh venv, with the wheel built from this repo:
#   pip wheel --no-deps -w dist . && bash benchmarks/first_answer.sh dist/facet-0.1.0-py3-none-any.whl
set -euo pipefail
wheel=$(realpath "$1"); photo=$(realpath "$(dirname "$0")/../tests/fixtures/photos/group3.jpg")
venv=$(mktemp -d)/venv; out=$(mktemp -d)
start=$(date +%s.%N)
python3 -m venv "$venv"
"$venv/bin/python" -m pip install -q "$wheel[cpu]"
installed=$(date +%s.%N)
(cd "$out" && "$venv/bin/facet" predict "$photo" -o answers.csv 2>/dev/null)
answered=$(date +%s.%N)
echo "install $(echo "$installed - $start" | bc) s, first answer $(echo "$answered - $installed" | bc) s, venv $(du -sm "$venv" | cut -f1) MB"
cat "$out/answers.csv"
