"""The one model_util function kohya's resize script calls."""


def is_safetensors(path):
    return path.endswith(".safetensors")
