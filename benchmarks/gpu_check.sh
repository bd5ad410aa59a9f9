#!/usr/bin/env bash
# Every GPU check of the course in one call to a lent GPU machine (about 9 minutes on an H100):
#
#   bash benchmarks/gpu_check.sh            # writes to $OUT (the device tool's folder) or ./gpu_out
#
# 1. the machine, 2. the tests that only run on a GPU (the CUDA-graph decoder), 3. decoding
# speed against transformers and the memory-bandwidth limit (0.8M, 10M, Llama 3.2 1B-shaped
# bf16), 4. the Shakespeare speedrun: the shakespeare-gpu preset (1,000 steps, the reference)
# and candidates for reaching nanoGPT's 1.4697 in 10 s of training (Muon; fewer, larger steps;
# shuffled passes over the text).
# Each step has its own time limit, so one that hangs does not cost the others; results land in
# benchmarks/results/*_cuda.* and are copied to the output folder with the logs.
set -u
OUT_DIR="${OUT:-gpu_out}"
mkdir -p "$OUT_DIR"
log() { echo "== $*" | tee -a "$OUT_DIR/summary.txt"; }

log "machine"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee -a "$OUT_DIR/summary.txt"
python -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)" \
    | tee -a "$OUT_DIR/summary.txt"
python -m pip install -q --no-deps -e . >/dev/null 2>&1 || log "editable install failed"

log "GPU-only tests"
timeout 300 python -m pytest -q -p no:nbval -o addopts="" tests/test_decoder.py \
    tests/test_decoder_edges.py tests/test_generate.py tests/test_generate_edges.py 2>&1 | tail -3 | tee -a "$OUT_DIR/summary.txt"

log "decoding speed (--compile: the CUDA-graph step)"
timeout 300 python benchmarks/generate_speed.py --device cuda --compile --repeats 3 \
    --lengths --tag gpu-check > "$OUT_DIR/generate_speed.log" 2>&1
tail -25 "$OUT_DIR/generate_speed.log" | tee -a "$OUT_DIR/summary.txt"

speedrun() {  # label, then --set overrides
    local label="$1"; shift
    timeout 200 python benchmarks/train_shakespeare.py --preset shakespeare-gpu --device cuda \
        --label "$label" --record benchmarks/results/train_shakespeare_cuda.jsonl "$@" \
        > "$OUT_DIR/train_$label.log" 2>&1
    grep -E "final:|machine:" "$OUT_DIR/train_$label.log" | sed "s/^/$label: /" \
        | tee -a "$OUT_DIR/summary.txt"
}
log "Shakespeare on the GPU: the preset, then speedrun candidates (target 1.4697 in <= 10 s)"
speedrun preset
speedrun muon-400 --set optimizer=muon --set muon_lr=0.02 --set max_steps=400 --set warmup_steps=40
speedrun muon-400-epochs --set optimizer=muon --set muon_lr=0.02 --set max_steps=400 \
    --set warmup_steps=40 --set data_order=epochs   # shuffled passes: the CPU preset's gain
speedrun bs128-300 --set batch_size=128 --set lr=2e-3 --set max_steps=300 --set warmup_steps=30 \
    --set optimizer=muon --set muon_lr=0.02
speedrun bf16-muon-250 --set batch_size=256 --set lr=3e-3 --set max_steps=250 --set warmup_steps=25 \
    --set optimizer=muon --set muon_lr=0.02

cp benchmarks/results/*_cuda.* "$OUT_DIR/" 2>/dev/null
log "done"
