"""
gguf_lora.py: a peft LoRA adapter -> a llama.cpp LoRA GGUF, for the GGUF base it was trained on.

    python train_lora.py gguf --adapter adapters/crafter --base qwen2.5-32b-instruct-q4_k_m.gguf
    # -> adapters/crafter/adapter.gguf (--out elsewhere)

train_lora.py sft calls to_gguf itself after training on a GGUF base. Llama, Qwen2 and Qwen3 bases
convert (GGUF_ARCHS); for others, use llama.cpp's convert_lora_to_gguf.py.
"""
import json
import re
from pathlib import Path

GGUF_ARCHS = {"llama": True, "qwen2": False, "qwen3": False}  # arch -> q/k rows permuted by llama.cpp's converter


def to_gguf(adapter_dir, base_gguf, out=None):
    """Write a peft LoRA as a llama.cpp LoRA GGUF (f32) for the GGUF base it was trained on; returns its path.
    Same layout as llama.cpp's convert_lora_to_gguf.py: blk.N.<tensor>.lora_a (rank x in), .lora_b (out x rank),
    adapter.lora.alpha; B rows of q/k are permuted for llama bases as the base conversion permuted q/k."""
    import gguf
    import numpy as np
    from safetensors.numpy import load_file
    adapter_dir = Path(adapter_dir)
    out = Path(out or adapter_dir / "adapter.gguf")
    cfg = json.loads((adapter_dir / "adapter_config.json").read_text())
    if cfg.get("use_rslora") or cfg.get("use_dora") or cfg.get("rank_pattern") or cfg.get("alpha_pattern"):
        raise ValueError("rsLoRA, DoRA and per-module ranks do not convert: train a plain LoRA")
    reader = gguf.GGUFReader(base_gguf)
    arch = reader.fields["general.architecture"].contents()
    if arch not in GGUF_ARCHS:
        raise ValueError(f"base architecture {arch!r}: this converter knows {', '.join(GGUF_ARCHS)}; "
                         "use llama.cpp's convert_lora_to_gguf.py")
    n_head = reader.fields[f"{arch}.attention.head_count"].contents()
    n_kv = reader.fields[f"{arch}.attention.head_count_kv"].contents()
    names = gguf.get_tensor_name_map({v: k for k, v in gguf.MODEL_ARCH_NAMES.items()}[arch],
                                     reader.fields[f"{arch}.block_count"].contents())
    pairs = {}
    for key, t in load_file(str(adapter_dir / "adapter_model.safetensors")).items():
        m = re.fullmatch(r"base_model\.model\.(.+)\.lora_([AB])\.weight", key)
        if not m:
            raise ValueError(f"{key}: only LoRA A/B matrices of linear layers convert")
        pairs.setdefault(m[1], {})[m[2]] = t.astype(np.float32)
    writer = gguf.GGUFWriter(str(out), arch)
    writer.add_type(gguf.GGUFType.ADAPTER)
    writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
    writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, float(cfg["lora_alpha"]))
    for module, ab in sorted(pairs.items()):
        name = names.get_name(module)
        if name is None:
            raise ValueError(f"{module}: no GGUF tensor of a {arch} model matches it")
        b = ab["B"]
        if GGUF_ARCHS[arch] and module.endswith(("q_proj", "k_proj")):
            heads = n_head if module.endswith("q_proj") else n_kv
            b = b.reshape(heads, 2, b.shape[0] // heads // 2, b.shape[1]).swapaxes(1, 2).reshape(b.shape)
        writer.add_tensor(f"{name}.weight.lora_a", np.ascontiguousarray(ab["A"]))
        writer.add_tensor(f"{name}.weight.lora_b", np.ascontiguousarray(b))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out
