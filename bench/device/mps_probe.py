"""Does CUDA's MPS daemon let many small-kernel processes share a GPU? (bench/embedded_runs.sh starts it.)

Each process stands in for the embedded 135M model decoding: per token 30 small matmul pairs (576 x 1536, as
SmolLM2's layers), a sync (as reading logits), ~1 ms of CPU (as sampling); it prints tokens/s after SECONDS.

    bash bench/device/mps_probe.sh     # 1 and 32 processes over the GPUs, without and then with MPS

Measured on nvidia-h200-x2 (32 cores, 2 H200; bench/device/mps_probe.txt): 32 processes without MPS ran at
95 tok/s each (3,017 in all) against 294 alone; with MPS at 282 each (9,102 in all).
"""
import sys
import time

import torch

seconds = float(sys.argv[1])
x = torch.randn(1, 576, device="cuda")
up, down = torch.randn(576, 1536, device="cuda"), torch.randn(1536, 576, device="cuda")
for _ in range(20):
    (x @ up) @ down  # warm-up
torch.cuda.synchronize()
tokens, start = 0, time.time()
while time.time() - start < seconds:
    h = x
    for _ in range(30):
        h = torch.tanh((h @ up) @ down) * 0.01 + x
    h.sum().item()
    busy_until = time.perf_counter() + 0.001
    while time.perf_counter() < busy_until:
        pass
    tokens += 1
print(tokens / (time.time() - start))
