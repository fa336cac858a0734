#!/usr/bin/env bash
# What a pull request that touches submissions/ or results/ runs (.github/workflows/submission.yml); run it
# locally the same way from the repository root:
#
#   bash tools/pr_check.sh BASE_REF [OUT]        # e.g. origin/main; OUT defaults to build/pr-check
#
# On the submission and saved-result files changed between BASE_REF and HEAD (merge base on):
#   1. install (`make .venv/bin/prunereg`, the README's set-up target), unless PRUNEREG_SKIP_INSTALL=1 and a
#      prunereg is on PATH (the test runs the script with its own venv);
#   2. `prunereg check` on the changed files: any problem stops here, exit 1, with the checker's lines;
#   3. a fresh registry OUT/new.db: every submission of HEAD registered, its saved results ingested (those
#      `make demo` ingests: results/<folder>/*--*.json), and the changed submissions evaluated on the embedded
#      model (CPU; PRUNEREG_EVALUATE_ARGS adds options, e.g. "--repeats 3 --task heldout-ppl"); a `checkpoint`
#      submission is not evaluated (its folder is not in git);
#   4. the site built from it into OUT/site (the workflow's artifact);
#   5. the base registry OUT/base.db the same way from BASE_REF's tree (the base versions of changed submissions
#      evaluated too, so a modified point is compared with itself), and `prunereg diff` into OUT/diff.md.
# Exit 0 when every step passed; 1 when the check failed; the failing command's status otherwise.
set -euo pipefail

BASE_REF=${1:?usage: tools/pr_check.sh BASE_REF [OUT]}
OUT=${2:-build/pr-check}
ROOT=$(git rev-parse --show-toplevel)
cd "$ROOT"
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
rm -rf "$OUT/site" "$OUT/diff.md" "$OUT"/new.db* "$OUT"/base.db* "$OUT/base-tree" # never an earlier run's

# Changed JSON files a submission can consist of; deleted files are not checked (nothing is left to check).
mapfile -t CHANGED < <(
  git diff --name-only --diff-filter=d "$BASE_REF...HEAD" -- submissions results |
    grep -E '^(submissions/[^/]+\.json|submissions/superseded/[^/]+/[^/]+\.json|results/.+\.json)$' || true
)
if [ ${#CHANGED[@]} -eq 0 ]; then
  echo "no submission or saved result changed since $BASE_REF"
  printf '## Pareto fronts: base branch → this pull request\n\nNo submission or saved result changed.\n' >"$OUT/diff.md"
  exit 0
fi
printf 'changed: %s\n' "${CHANGED[@]}"

# 1. install
if [ "${PRUNEREG_SKIP_INSTALL:-}" = 1 ] && command -v prunereg >/dev/null; then
  PRUNEREG=$(command -v prunereg)
else
  make .venv/bin/prunereg
  PRUNEREG=$ROOT/.venv/bin/prunereg
fi
PYTHON=$(dirname "$PRUNEREG")/python
[ -x "$PYTHON" ] || PYTHON=python3

# 2. check: exit 1 with one line per problem
"$PRUNEREG" check "${CHANGED[@]}" || exit 1

# Current submissions among the changed files (not superseded versions, not results), and those the
# embedded model can evaluate here.
evaluable() {  # FILE...: those whose adapter is not `checkpoint`
  "$PYTHON" -c 'import json, sys
for path in sys.argv[1:]:
    if json.load(open(path))["adapter"]["name"] != "checkpoint":
        print(path)' "$@"
}
SUBMISSIONS=()
for f in "${CHANGED[@]}"; do
  case $f in submissions/superseded/*) ;; submissions/*) SUBMISSIONS+=("$f") ;; esac
done

# registry DB TREE [evaluate FILE...]: register and ingest TREE's files, evaluate the named submissions
fill() {
  local db=$1 tree=$2
  shift 2
  rm -f "$db"
  (
    cd "$tree"
    shopt -s nullglob
    local subs=(submissions/*.json) saved=(results/*/*--*.json) # what `make demo` ingests
    [ ${#subs[@]} -eq 0 ] || "$PRUNEREG" register "${subs[@]}" --db "$db" >/dev/null
    [ ${#saved[@]} -eq 0 ] || "$PRUNEREG" ingest "${saved[@]}" --db "$db" >/dev/null
    for f in "$@"; do
      [ -f "$f" ] || continue  # a submission the base does not have yet
      while read -r ok; do
        # shellcheck disable=SC2086  # PRUNEREG_EVALUATE_ARGS is a list of options
        "$PRUNEREG" evaluate "$ok" --db "$db" ${PRUNEREG_EVALUATE_ARGS:-}
      done < <(evaluable "$f")
    done
  )
}

# 3. the pull request's registry, 4. its site
fill "$OUT/new.db" "$ROOT" "${SUBMISSIONS[@]}"
"$PRUNEREG" leaderboard build --out "$OUT/site" --force --submissions submissions --db "$OUT/new.db"

# 5. the base registry, from BASE_REF's tree, and the diff
BASE_TREE=$OUT/base-tree
rm -rf "$BASE_TREE"
mkdir -p "$BASE_TREE"
git archive "$(git merge-base "$BASE_REF" HEAD)" submissions results | tar -x -C "$BASE_TREE"
fill "$OUT/base.db" "$BASE_TREE" "${SUBMISSIONS[@]}"
"$PRUNEREG" diff "$OUT/base.db" "$OUT/new.db" --out "$OUT/diff.md"
echo "check ok; site: $OUT/site; diff: $OUT/diff.md"
