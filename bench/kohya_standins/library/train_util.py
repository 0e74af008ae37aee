"""The one train_util function kohya's resize script calls."""
import hashlib

import torch


def precalculate_safetensors_hashes(tensors, metadata):
    digest = hashlib.sha256()
    for name in sorted(tensors):
        digest.update(tensors[name].contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    model_hash = "0x" + digest.hexdigest()
    return model_hash, model_hash[:10]
