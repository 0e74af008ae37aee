"""Times kohya's resize_lora_model one layer at a time.

usage: kohya_layer_timer.py LORA NEW_RANK METHOD PARAM  (METHOD "none" for a fixed rank)
Prints {layer: seconds} as JSON. kohya's networks/resize_lora.py must be importable (PYTHONPATH:
the stand-ins folder, then the sd-scripts folder).
"""
import json
import sys
import time

import torch
from networks import resize_lora

path, new_rank, method, param = sys.argv[1], int(sys.argv[2]), sys.argv[3], float(sys.argv[4])
method = None if method == "none" else method
state, _ = resize_lora.load_state_dict(path, torch.float)
layers = sorted({k.rsplit(".", 2)[0] for k in state if k.endswith(".lora_down.weight")})
times = {}
for layer in layers:
    one = {k: v for k, v in state.items() if k.rsplit(".", 2)[0] == layer}
    start = time.perf_counter()
    resize_lora.resize_lora_model(one, new_rank, new_rank, torch.float, "cpu", method, param, False)
    times[layer] = time.perf_counter() - start
    print(f"{layer}: {times[layer]:.2f} s", file=sys.stderr, flush=True)
print(json.dumps(times))
