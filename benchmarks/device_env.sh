# Sourced by every benchmarks/h200_*.sh: the device machine's python3 has torch and transformers but not our other
# dependencies, so the wheels of README "Measuring on a GPU" (carried in .whl/) go into /tmp/site, and the checkout is
# importable as the package `prunereg` through a link; $card (h100 or h200) names the results folder after the card
# that came. Run from the repository root.
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
mkdir -p /tmp/pkg && ln -sfn "$PWD" /tmp/pkg/prunereg
export PYTHONPATH=/tmp/site:/tmp/pkg PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
case "$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)" in
  *H100*) card=h100 ;;
  *) card=h200 ;;
esac
