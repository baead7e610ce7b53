#!/usr/bin/env bash
# Run CI (`bash .ci/run`) from a clean clone of HEAD under each OpenBLAS kernel this CPU can run
# and under one and two threads, and print a summary. Exit status 1 when any setting fails.
#
#   tools/check_portability.sh           # the whole of .ci/run (install, lint, tests, docs)
#   tools/check_portability.sh --quick   # .ci/run once, then only the README's test command
#
# The settings are given on the command line of each run only; neither the tests nor .ci/run
# set them. Only committed work is checked (the clone is of HEAD). The clone gets ../shared
# beside it, as on CI. One virtual environment serves every run.
set -uo pipefail

quick=0
[ "${1:-}" = "--quick" ] && quick=1

repo=$(git rev-parse --show-toplevel)
work=$(mktemp -d)
git clone --quiet "$repo" "$work/hoag_shine"
if [ -d "$repo/../shared" ]; then
  ln -s "$(cd "$repo/../shared" && pwd)" "$work/shared"
fi
venv="$work/venv"

# OpenBLAS kernels, from the most generic; the ones the CPU lacks are skipped.
flags=$(grep -m1 '^flags' /proc/cpuinfo 2>/dev/null || true)
kernels=(Prescott)
[[ " $flags " == *" avx2 "* ]] && kernels+=(Haswell)
[[ " $flags " == *" avx512f "* ]] && kernels+=(SkylakeX)

summary=()
failed=0
first=1
for kernel in "${kernels[@]}"; do
  for threads in 1 2; do
    log="$work/ci-$kernel-$threads.log"
    echo "== OPENBLAS_CORETYPE=$kernel OMP_NUM_THREADS=$threads (log: $log)"
    if [ "$quick" = 1 ] && [ "$first" = 0 ]; then
      (cd "$work/hoag_shine" && OPENBLAS_CORETYPE=$kernel OMP_NUM_THREADS=$threads \
        "$venv/bin/python" -m pytest -q -p no:cacheprovider) >"$log" 2>&1
    else
      (cd "$work/hoag_shine" && CI=true OPENBLAS_CORETYPE=$kernel OMP_NUM_THREADS=$threads \
        HOAG_SHINE_CI_VENV="$venv" bash .ci/run) >"$log" 2>&1
    fi
    rc=$?
    first=0
    # The kernel OpenBLAS really used, as threadpoolctl reports it.
    used=$(OPENBLAS_CORETYPE=$kernel OMP_NUM_THREADS=$threads "$venv/bin/python" -c \
      "import numpy, threadpoolctl; print(','.join(sorted({i.get('architecture', '?') for i in threadpoolctl.threadpool_info() if i['internal_api'] == 'openblas'})))" \
      2>/dev/null)
    result=$(grep -E '[0-9]+ (passed|failed)' "$log" | tail -n 1)
    summary+=("$kernel ($used) threads=$threads rc=$rc: ${result:-no test summary}")
    [ "$rc" = 0 ] || failed=1
  done
done

echo
echo "Portability matrix (clean clone of $(git -C "$repo" rev-parse --short HEAD)):"
printf '  %s\n' "${summary[@]}"
exit "$failed"
