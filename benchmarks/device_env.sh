# Sourced by every benchmarks/h200_*.sh: the device machine's python3 has torch and transformers but not our other
# dependencies, so the wheels of README "Measuring on a GPU" (carried in .whl/) go into /tmp/site, and the checkout is
# importable as the package `prunereg` through a link. Run from the repository root.
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
mkdir -p /tmp/pkg && ln -sfn "$PWD" /tmp/pkg/prunereg
export PYTHONPATH=/tmp/site:/tmp/pkg PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
