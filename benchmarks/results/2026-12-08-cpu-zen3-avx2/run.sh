#!/bin/bash
# resnet50 on a 2-core Zen 3 (AVX2): default vs torchvision, frozen vs compile+freezing and the runtimes
cd /work/main && . .venv/bin/activate
out=/tmp/w/zen3
for b in 1 8; do
  for lay in "" "--nchw"; do
    tag=resnet50_b${b}${lay:+_nchw}
    python -m resnet_ext bench --arch resnet50 --batch-size $b $lay --compile --runtimes --iters 7 \
      --json $out/$tag.json > $out/$tag.txt 2>&1
    echo "$tag rc=$?"
  done
done
