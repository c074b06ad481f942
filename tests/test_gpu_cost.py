"""bench/gpu_cost.py on CPU: the random Q4_K_M file has the real file's size and sane weights, and the cost
table's per-token costs come back from the runs they were measured in."""
import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import gpu_cost  # noqa: E402


def test_q4km_mix_has_the_size_of_qwen25_32b_q4_k_m():
    shape = {**gpu_cost.QWEN25_32B, "vocab_size": 152064}
    tensors = gpu_cost.q4km_tensors(shape)
    assert sum(gpu_cost.nbytes(*t[1:]) for t in tensors) == 19_845_357_568  # llama.cpp's file: 19.85 GB
    q6 = [name for name, kind, _, _ in tensors if kind == gpu_cost.Q6_K]
    assert "output.weight" in q6 and "blk.0.attn_v.weight" in q6 and "blk.9.attn_v.weight" not in q6
    assert len(q6) == 1 + 2 * 32  # output, and attn_v + ffn_down of 32 of the 64 layers (first 8, last 8, every 3rd)


@pytest.mark.parametrize("kind", [gpu_cost.Q4_K, gpu_cost.Q6_K])
def test_random_blocks_are_zero_mean_with_std_002(kind):
    from gguf import GGMLQuantizationType
    from gguf.quants import dequantize
    pool = gpu_cost.block_pool(kind, 2048, np.random.default_rng(1)).reshape(-1, gpu_cost.BLOCK[kind])
    w = dequantize(pool, GGMLQuantizationType(kind)).ravel()
    assert abs(w.mean()) < 0.001 and 0.018 < w.std() < 0.022


def test_token_costs_recover_prefill_and_decode_costs():
    a, b = 0.0004, {("server", 32): 0.0035, ("server", 1): 0.016}

    def run(path, n, prompt, generated):  # a run whose window is exactly what the costs say
        window = a * prompt + b[(path, n)] * generated
        return {"path": path, "n": n, "window_seconds": window, "uncached_prompt_tok_s": prompt / window,
                "generated_tok_s": generated / window}
    runs = [run("server", 32, 75_000, 11_000), run("server", 32, 86_000, 6_000), run("server", 1, 11_000, 2_000)]
    got_a, got_b = gpu_cost.token_costs(runs)
    assert got_a == pytest.approx(a) and got_b == pytest.approx(b)


def test_table_prices_the_cache_per_path(tmp_path, capsys):
    """Hours = steps x (uncached prompt tokens x prefill cost + generated tokens x the path's cost); the cached share
    (the in-process backend's reuse) lowers the llama.cpp paths' prompts, never the transformers backend's: it keeps
    no cache between calls."""
    a, b = 0.0004, {("server", 32): 0.0035, ("transformers", 1): 0.077, ("transformers-4bit", 1): 0.1}

    def run(path, n, prompt, generated, load_4bit=False):
        window = a * prompt + b[(path + ("-4bit" if load_4bit else ""), n)] * generated
        return {"path": path, "n": n, "load_4bit": load_4bit, "window_seconds": window,
                "uncached_prompt_tok_s": prompt / window, "generated_tok_s": generated / window,
                "limits": {"grammar": False}}
    runs = [run("server", 32, 75_000, 11_000), run("server", 32, 86_000, 6_000), run("transformers", 1, 4_000, 500),
            run("transformers", 1, 4_000, 500, load_4bit=True)]  # 4-bit: a column of its own
    paths = []
    for i, r in enumerate(runs):
        paths.append(tmp_path / f"run{i}.json")
        paths[-1].write_text(json.dumps(r))
    tokens = [tmp_path / "tokens_cpu_minihack_v0.json", tmp_path / "tokens_cpu_crafter_twomodel.json"]
    for f, prompt in zip(tokens, (4000, 10_000)):
        f.write_text(json.dumps({"cache_share": 0.5, "per_step": {"calls": 3, "prompt_tokens": prompt,
                                                                   "completion_tokens": 100}}))
    gpu_cost.table(argparse.Namespace(runs=[str(p) for p in paths], tokens=[str(f) for f in tokens]))
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ") and "---" not in line][1:]
    cells = [[float(c.strip("* ")) for c in row.strip("| \n").split(" | ")[-3:]] for row in rows]
    assert [row.split(" | ")[0] for row in rows] == ["| crafter", "| minihack", "| **all cells**"]  # the README's order
    server_32, transformers_1, transformers_4bit_1 = cells[1]
    steps = gpu_cost.PROTOCOL_STEPS["minihack"]
    assert server_32 == pytest.approx(steps * (a * 2000 + 0.0035 * 100) / 3600, abs=0.05)
    assert transformers_1 == pytest.approx(steps * (a * 4000 + 0.077 * 100) / 3600, abs=0.05)
    assert transformers_4bit_1 == pytest.approx(steps * (a * 4000 + 0.1 * 100) / 3600, abs=0.05)
    assert cells[2] == pytest.approx([c + m for c, m in zip(cells[0], cells[1])], abs=0.6)  # totals, rounded to 1 h


def test_random_weights_saved_once_then_loaded_by_the_real_loader(tmp_path):
    """--load-4bit: the random model goes through llm_hf.load_hf (whose BitsAndBytesConfig quantizes it as it
    would the real model) from a folder written once; the weights are the same random ones."""
    import torch
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast
    tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel({"a": 0, "<unk>": 1}, unk_token="<unk>")))
    shape = {**gpu_cost.TINY, "vocab_size": 256}
    folder = tmp_path / "random"
    load = gpu_cost.random_hf_loader(shape, tok, str(folder))
    _, first = load("ignored", torch.float32)
    written = (folder / "model.safetensors").stat().st_mtime_ns
    _, again = load("ignored", torch.float32)
    assert (folder / "model.safetensors").stat().st_mtime_ns == written  # loaded, not made and saved again
    _, made = gpu_cost.random_hf_loader(shape, tok)("ignored", torch.bfloat16)  # saved in bf16
    for name, weight in made.state_dict().items():
        assert torch.equal(first.state_dict()[name], weight.float()) and torch.equal(again.state_dict()[name], weight.float())
