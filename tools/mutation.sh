#!/usr/bin/env bash
# Mutation testing of src/kmsgate/protocol/ against tests/protocol/, run by hand (not in CI).
#
#   tools/mutation.sh                      every module of protocol/ (slow: thousands of mutants)
#   tools/mutation.sh engine session epid  only those modules
#
# Needs the `mutation` dependency group: pip install -e . --group test --group mutation
# Configuration: [tool.mutmut] in pyproject.toml. Reading the results: docs/testing.md.
set -euo pipefail
cd "$(dirname "$0")/.."

# crypto.py's pure-Python rounds are the code under test; the C extension would hide them.
export KMSGATE_PURE_PYTHON_CIPHER=1
# The mutated rpc/ndr/messages code must run: not the C layout that takes the common case.
export KMSGATE_PURE_PYTHON_WIRE=1
# Mutants are .py files: the mypyc build of the same modules would shadow them.
export KMSGATE_PURE_PYTHON_HOT_PATH=1

patterns=()
for module in "$@"; do
    patterns+=("kmsgate.protocol.${module}.*")
done

mutmut run --max-children "${MUTMUT_CHILDREN:-2}" "${patterns[@]}"
mutmut results --all true > mutants/results.txt
for module in ${*:-__init__ client_session counting crypto engine epid errors hresult messages ndr observer rpc session verification}; do
    prefix="kmsgate.protocol.${module}."
    total=$(grep -c "^ *${prefix}" mutants/results.txt || true)
    killed=$(grep "^ *${prefix}" mutants/results.txt | grep -c ": killed$" || true)
    [ "$total" -gt 0 ] && printf '%-16s killed %5d of %5d\n' "$module" "$killed" "$total"
done
echo "survivors: mutmut results; one mutant's diff: mutmut show NAME"
