"""Tests of train_lora.py: data engine rules on hand-made traces, exact chat rebuilding on a real
agent trace, LoRA SFT on the embedded model (CPU), GGUF LoRA for llama.cpp, resume, and the
training engine with a scripted meta-LLM."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import automem
import llm
import llm_hf
import loop as machinery
import recipe
import scaffold_spec
import sft_data
import train_lora

ROOT = Path(__file__).resolve().parents[1]

SYSTEM = "You play a game and keep notes in files. Ops: <|SEARCH|>file|word<|END|>, <|APPEND|>file|text<|END|>, <|DONE|>."
WRITES = ("APPEND", "WRITE", "CREATE", "UPSERT")


# ----------------------------------------------------------------------------- hand-made traces

def S(file="notes.txt", word="tree", matches=1):
    return ("SEARCH", [file, word], {"matches": matches})


def A(text="tree to the east", redundant=False):
    return ("APPEND", ["notes.txt", text], {"wrote": not redundant, "redundant": redundant})


FAILED = ("READ", ["missing.txt"], {"ok": False})
DONE = ("DONE", [], {})
ACT = ("ACTION", ["Noop"], {})


def turn(ops, reply=None):
    """A recorded call: ops run until DONE/ACTION (which get no result), as automem records them."""
    text = reply or "\n".join(f"<|{n}|>{'|'.join(a)}<|END|>" if n not in ("DONE",) else "<|DONE|>" for n, a, _ in ops)
    stop = next((i for i, (n, _, _) in enumerate(ops) if n in ("DONE", "ACTION")), len(ops))
    results = [{"text": "", "ok": True, "wrote": False, "redundant": False, "matches": None, **r} for _, _, r in ops[:stop]]
    return {"reply": text, "ops": [[n, a] for n, a, _ in ops], "results": results}


def write_trace(path, steps, *, env="crafter", task="default", seed=1000, progression=0.0, agent="memory"):
    """steps: dicts with optional obs, log/plan (lists of turns), gate (the PLAN turns whose action check_action
    sent back), action, valid, fallback, progression."""
    lines = [{"type": "episode", "env": env, "task": task, "seed": seed, "agent": agent,
              "system": SYSTEM if agent == "memory" else None, "files": {}, "actions": ["Noop"], "max_steps": 100}]
    for i, s in enumerate(steps):
        rec = {"type": "step", "step": i, "observation": s.get("obs", f"observation {i}"), "action": s.get("action", "Noop"),
               "valid": s.get("valid", True), "executed": "Noop", "reward": 0.0, "done": False,
               "progression": s.get("progression", 0.0), "fallback": s.get("fallback", False), "writes": []}
        def calls(routine, spec):
            return [{"messages": [{"role": "user", "content": f"{routine.upper()} phase, step {i}." if j == 0 else
                                   f"Results of call {j}."}], **t, "prompt_tokens": 1, "completion_tokens": 1,
                     "seconds": 0.0, "model": "base"} for j, t in enumerate(spec)]
        for routine in ("log", "plan"):
            if routine in s:
                rec[routine] = {"turns": calls(routine, s[routine]), "ended": "done", "action": None}
        rec["gate"] = [{"action": "Do", "reason": "unsafe", "turn": k} for k in s.get("gate", [])]
        lines.append(rec)
    lines.append({"type": "end", "steps": len(steps), "progression": progression, "final_observation": "the end"})
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return path


def verdicts(path):
    """{(step, routine, turn): rule} for every turn of a trace (post-processing rules included), also keyed
    (step, routine, turn, sent_back)."""
    out = {}
    for ex in sft_data.candidates(path):
        rule = "post:no_memory_op" if not sft_data.has_memory_op(ex["target"]) else sft_data.select(ex)[1]
        out[(ex["step"], ex["routine"], ex["turn"], ex["sent_back"])] = rule
        if not ex["sent_back"]:
            out[(ex["step"], ex["routine"], ex["turn"])] = rule
    return out


# One productive step whose PLAN search found something: kept unless a rule says otherwise.
GOOD_PLAN = {"plan": [turn([S(), ACT])]}


@pytest.mark.parametrize("name, steps, kw, where, rule", [
    ("fallback keeps", [GOOD_PLAN], {}, (0, "plan", 0), "keep:search_then_productive_action"),
    ("fallback drops", [{**GOOD_PLAN, "fallback": True}], {}, (0, "plan", 0), "drop:fallback"),
    ("sent-back turn drops", [{"plan": [turn([S(word="lava"), ACT]), turn([S(), ACT])], "gate": [0]}], {},
     (0, "plan", 0, True), "drop:sent_back"),
    ("the turn after it keeps", [{"plan": [turn([S(word="lava"), ACT]), turn([S(), ACT])], "gate": [0]}], {},
     (0, "plan", 1, False), "keep:search_then_productive_action"),
    ("failed op drops", [{"plan": [turn([S(), FAILED, ACT])]}], {}, (0, "plan", 0), "drop:failed_op"),
    ("stuck drops", [{"obs": "same"}, {"obs": "same", "log": [turn([S()]), turn([A(), DONE])]}, {"obs": "same"},
                     {"obs": "same"}], {}, (1, "log", 1), "drop:stuck"),
    ("short repeat keeps", [{"obs": "x"}, {"obs": "x", "log": [turn([S()]), turn([A(), DONE])]}, {"obs": "y"}], {},
     (1, "log", 1), "keep:write_after_retrieval"),
    ("redundant write drops", [{}, {"log": [turn([S()]), turn([A(redundant=True), DONE])]}], {}, (1, "log", 1),
     "drop:redundant_write"),
    ("write without retrieval drops", [{}, {"log": [turn([S(), A(), DONE])]}], {}, (1, "log", 0),
     "drop:write_without_retrieval"),
    ("retrieval before write keeps", [{}, {"log": [turn([S(matches=0)]), turn([A(), DONE])]}], {}, (1, "log", 0),
     "keep:retrieval_before_write"),
    ("empty search drops", [{}, {"log": [turn([S(matches=0)]), turn([DONE])]}], {}, (1, "log", 0), "drop:empty_search"),
    ("search then invalid action drops", [{**GOOD_PLAN, "valid": False}], {}, (0, "plan", 0), "drop:no_evidence"),
    ("progressed episode keeps", [{"obs": "x", **GOOD_PLAN}, {"obs": "x"}], {"progression": 0.05}, (0, "plan", 0),
     "keep:episode_progressed"),
    ("unprogressed episode drops", [{"obs": "x", **GOOD_PLAN}, {"obs": "x"}], {}, (0, "plan", 0), "drop:no_evidence"),
    ("action-only PLAN reply drops", [{"plan": [turn([ACT])]}], {}, (0, "plan", 0), "post:no_memory_op"),
])
def test_selection_rules(tmp_path, name, steps, kw, where, rule):
    assert verdicts(write_trace(tmp_path / "t.jsonl", steps, **kw))[where] == rule


def test_postprocess_formatting():
    log = "```text\n<|SEARCH|>notes.txt|tree<|END|>\n```\n<|APPEND|>notes.txt|tree east<|END|><|DONE|> and more"
    assert sft_data.postprocess("log", log) == "<|SEARCH|>notes.txt|tree<|END|>\n<|APPEND|>notes.txt|tree east<|END|><|DONE|>"
    plan = "I check first.\n<|SEARCH|>notes.txt|tree<|END|>\n<|ACTION|>Move West<|END|> because"
    assert sft_data.postprocess("plan", plan) == "I check first.\n<|SEARCH|>notes.txt|tree<|END|>"
    assert sft_data.postprocess("plan", "ACTION: Noop") == ""
    assert not sft_data.has_memory_op("thinking <|DONE|>")


def test_build_dataset_dedup_summary_and_cli(tmp_path, capsys):
    steps = [{}, {"log": [turn([S()]), turn([A(), DONE])], **GOOD_PLAN}]
    write_trace(tmp_path / "a/traces/crafter/default__00.jsonl", steps)
    write_trace(tmp_path / "b/traces/crafter/default__00.jsonl", steps)  # the same turns again
    write_trace(tmp_path / "b/traces/crafter/default__01.jsonl", steps, agent="window")
    out = tmp_path / "data.jsonl"
    train_lora.main(["data", "--runs", str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(out)])
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    summary = json.loads(out.with_suffix(".summary.json").read_text())
    assert summary["traces"] == 2 and summary["skipped_traces"] == 1
    assert summary["rules"]["dedup:duplicate"] == len(rows) == 3
    assert summary["routines"] == {"log": 2, "plan": 1} and summary["envs"] == {"crafter": 3}
    assert "keep:write_after_retrieval" in capsys.readouterr().out
    for row in rows:
        msgs = row["messages"]
        assert msgs[0] == {"role": "system", "content": SYSTEM} and msgs[-1]["role"] == "assistant"
        assert "ACTION" not in msgs[-1]["content"] and row["meta"]["rule"].startswith("keep:")
    # a later turn's chat holds the earlier raw reply and the continuation message
    second = next(r for r in rows if r["meta"]["routine"] == "log" and r["meta"]["turn"] == 1)
    assert [m["role"] for m in second["messages"]] == ["system", "user", "assistant", "user", "assistant"]

    picky = tmp_path / "picky.py"
    picky.write_text("def select(example):\n    return example['routine'] == 'plan', 'keep:plan_only'\n")
    train_lora.main(["data", "--runs", str(tmp_path / "a"), "--out", str(out), "--select", str(picky)])
    assert {json.loads(line)["meta"]["rule"] for line in out.read_text().splitlines()} == {"keep:plan_only"}

    picky.write_text("def select(example):\n    return False, 'drop:all'\n")
    with pytest.raises(SystemExit) as e:
        train_lora.main(["data", "--runs", str(tmp_path / "a"), "--out", str(out), "--select", str(picky)])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and err.startswith("error: no example kept") and "loosen select()" in err
    assert len(err.splitlines()) == 1


def test_chat_rebuilt_exactly_from_a_real_agent_trace(tmp_path):
    """The agent (scripted replies) plays Crafter; every rebuilt chat equals what the model was sent."""
    import envs
    sent = []

    def reply(messages):
        sent.append(json.loads(json.dumps(messages)))
        log = "<|DONE|>" in messages[-1]["content"]  # LOG's prompts offer <|DONE|>, PLAN's do not
        if len(messages) == 1 and log:
            return "```\n<|SEARCH|>map_notes.txt|tree<|END|>\n```"
        if len(messages) == 1:
            return "<|SEARCH|>map_notes.txt|tree<|END|>"
        if log:
            return "<|APPEND|>map_notes.txt|tree north-east<|END|>\n<|DONE|>"
        return "<|ACTION|>Move East<|END|>"

    scaffold = scaffold_spec.load_scaffold(ROOT / "scaffolds/crafter/v0")
    scaffold["limits"].update(log_turns=2, plan_turns=2)
    game = envs.make("crafter", "default", max_steps=3)
    agent = automem.Agent(scaffold, llm.load("scripted", replies=reply), game, tmp_path / "memory")
    path = tmp_path / "trace.jsonl"
    automem.run_episode(agent, game, 1000, path)
    cands = sft_data.candidates(path)
    assert len(cands) == len(sent) == 10
    for ex, messages in zip(cands, sent):
        assert ex["messages"][:-1] == messages
    assert cands[2]["routine"] == "log" and cands[2]["target"] == "<|SEARCH|>map_notes.txt|tree<|END|>"


# ----------------------------------------------------------------------------- SFT

def sft_traces(root):
    """Two short episodes whose LOG/PLAN turns the default rules keep."""
    for k in range(2):
        steps = [{"obs": f"ep{k} start", "plan": [turn([S("notes.txt", "wood"), ACT])]}]
        for i in range(1, 4):
            steps.append({"obs": f"ep{k} obs {i}", "log": [turn([S("notes.txt", f"item{i}", matches=0)]),
                                                           turn([A(f"step {i}: saw item{i}"), DONE])],
                          "plan": [turn([S("notes.txt", f"item{i}"), ACT])]})
        write_trace(root / f"traces/crafter/default__{k:02d}.jsonl", steps, seed=1000 + k)
    return root


@pytest.fixture(scope="module")
def data_file(tmp_path_factory):
    root = sft_traces(tmp_path_factory.mktemp("sft_runs"))
    out = root / "data.jsonl"
    assert sft_data.build_dataset([root], out)["examples"] == 10
    return out


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    """A random-weight 2-layer Llama with the embedded model's tokenizer and chat template (fast to load)."""
    import torch
    import transformers
    gguf = Path(llm.DEFAULT_MODEL)
    tok = transformers.AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    config = transformers.LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048)
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("tiny") / "model"
    transformers.LlamaForCausalLM(config).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def test_loss_only_on_the_last_assistant_message(tiny_model, data_file, tmp_path):
    """What SFTTrainer trains on: labels -100 everywhere but on the last assistant message and its end-of-turn
    tokens, after the prompt as the model sees it at inference (earlier assistant turns are prompt too)."""
    import transformers
    tok = transformers.AutoTokenizer.from_pretrained(tiny_model)
    rows = sft_data.read_jsonl(data_file)
    assert any(sum(m["role"] == "assistant" for m in r["messages"]) == 2 for r in rows)  # LOG turn 2 follows turn 1
    cfg = recipe.lora_config("crafter", {"rank": 4, "alpha": 8, "batch": 2, "micro_batch": 2})
    trainer, dropped, _ = train_lora.sft_trainer(rows, tiny_model, cfg, tmp_path)
    assert dropped == 0 and len(trainer.train_dataset) == len(rows)
    for row, ex in zip(rows, trainer.train_dataset):
        ids, labels = ex["input_ids"], ex["labels"]
        n_prompt = next(i for i, x in enumerate(labels) if x != -100)
        assert labels[n_prompt:] == ids[n_prompt:]
        assert tok.decode(ids[:n_prompt]) == tok.apply_chat_template(row["messages"][:-1], tokenize=False,
                                                                       add_generation_prompt=True)
        assert tok.decode(ids[n_prompt:]) == row["messages"][-1]["content"] + "<|im_end|>\n"
    batch = next(iter(trainer.get_train_dataloader()))  # padded to the longer of two: padding is no target either
    assert batch["input_ids"].shape[0] == 2 and not (batch["labels"] != -100)[batch["attention_mask"] == 0].any()
    assert next(iter(trainer.get_eval_dataloader()))["input_ids"].shape[0] == 1  # eval loss: a mean over chats
    assert len(train_lora.sft_dataset(tok, rows, 10)) == 0  # over the cutoff: dropped, not truncated


@pytest.fixture(scope="module")
def embedded_hf(tmp_path_factory):
    """The embedded GGUF dequantized once into a transformers folder (the same weights, fast to reload)."""
    import torch
    path = tmp_path_factory.mktemp("smollm2") / "model"
    tok, net = llm_hf.load_hf(llm.DEFAULT_MODEL, torch.float32)  # a plain model (transformers 5 can save only that)
    net.save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def embedded_adapter(data_file, tmp_path_factory):
    """SFT of the embedded SmolLM2-135M GGUF (dequantized, fp32 LoRA on CPU) for a few steps."""
    out = tmp_path_factory.mktemp("adapters") / "crafter"
    card = train_lora.train(data_file, out, llm.DEFAULT_MODEL, overrides={"rank": 8, "alpha": 16, "lr": 3e-3, "batch": 1},
                            max_steps=8, save_steps=4, eval_examples=2)
    return out, card


@pytest.mark.slow
def test_sft_embedded_model_learns_and_adapter_switches(embedded_adapter, embedded_hf, data_file):
    out, card = embedded_adapter
    assert card["loss_after"] < card["loss_before"] and card["steps"] == 8
    assert card["base_model"] == llm.DEFAULT_MODEL and card["data_sha256"] and card["config"]["targets"] == "attention"
    assert json.loads((out / "adapter_config.json").read_text())["base_model_name_or_path"] == llm.DEFAULT_MODEL
    messages = json.loads(data_file.read_text().splitlines()[1])["messages"][:-1]  # a LOG prompt
    assert messages[-1]["content"].startswith("LOG phase")  # sft_traces writes a system message, then the LOG prompt
    plain = llm.load("transformers", str(embedded_hf), temperature=0).chat(messages, max_tokens=16).text
    both = llm.load("transformers", str(embedded_hf), temperature=0, adapters={"memory": str(out)})
    assert both.chat(messages, max_tokens=16).text == plain  # adapter disabled: the base model, unchanged
    assert both.chat(messages, adapter="memory", max_tokens=16).text != plain


@pytest.mark.slow
def test_gguf_lora_matches_peft_in_llama_cpp(embedded_adapter, embedded_hf, tmp_path):
    """llama.cpp with the converted LoRA gives the logits transformers+peft gives (q/k permuted for llama)."""
    import peft
    import torch
    import transformers
    out, card = embedded_adapter
    assert card["gguf"] == str(out / "adapter.gguf") and (out / "adapter.gguf").is_file()
    gguf = Path(llm.DEFAULT_MODEL)
    net = transformers.AutoModelForCausalLM.from_pretrained(embedded_hf)
    torch.manual_seed(0)  # a random LoRA strong enough to dwarf the Q4_1-vs-fp32 noise (about 0.1 logit)
    lora = peft.get_peft_model(net, peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "k_proj", "v_proj"],
                                                    init_lora_weights=False))
    for name, p in lora.named_parameters():
        if "lora_B" in name:
            p.data *= 2.0
    lora.save_pretrained(tmp_path / "random")
    train_lora.main(["gguf", "--adapter", str(tmp_path / "random"), "--base", str(gguf)])
    ids = list(range(1000, 1060))
    with torch.no_grad():
        hf = lora(torch.tensor([ids])).logits[0, -1].numpy()
        with lora.disable_adapter():
            hf_base = lora(torch.tensor([ids])).logits[0, -1].numpy()
    import llama_cpp

    def last_logits(lora_path):
        m = llama_cpp.Llama(str(gguf), n_ctx=256, n_threads=2, verbose=False, lora_path=lora_path)
        m.eval(ids)
        return np.ctypeslib.as_array(m._ctx.get_logits(), shape=(m._n_vocab,)).copy()
    cpp, cpp_base = last_logits(str(tmp_path / "random/adapter.gguf")), last_logits(None)
    assert np.abs(hf - hf_base).mean() > 1.0  # the adapter moves the logits a lot ...
    assert np.corrcoef(hf - hf_base, cpp - cpp_base)[0, 1] > 0.95  # ... and the same way in both
    assert np.abs(hf - cpp).mean() < 0.5


def test_sft_resumes_from_a_checkpoint(tiny_model, data_file, tmp_path):
    kw = {"overrides": {"rank": 4, "alpha": 8, "lr": 1e-3, "batch": 2}, "max_steps": 4, "save_steps": 2, "eval_examples": 2}
    first = tmp_path / "first"
    card = train_lora.train(data_file, first, tiny_model, **kw)
    assert card["steps"] == 4 and card["resumed_from"] is None and "gguf" not in card  # not a GGUF base
    assert train_lora.train(data_file, first, tiny_model, **kw)["run_id"] == card["run_id"]  # finished: nothing to do
    second = tmp_path / "second"  # as if killed after step 2
    shutil.copytree(first, second)
    shutil.rmtree(second / "checkpoints/checkpoint-4")
    (second / "card.json").unlink()
    (second / "adapter_model.safetensors").unlink()
    resumed = train_lora.train(data_file, second, tiny_model, **kw)
    assert resumed["resumed_from"].endswith("checkpoint-2") and resumed["steps"] == 4
    from safetensors.numpy import load_file
    a, b = load_file(first / "adapter_model.safetensors"), load_file(second / "adapter_model.safetensors")
    assert a.keys() == b.keys() and all(np.allclose(a[k], b[k], atol=1e-6) for k in a)
    with pytest.raises(ValueError, match="different training run"):
        train_lora.train(data_file, second, tiny_model, **{**kw, "overrides": {**kw["overrides"], "rank": 8}})


def test_sft_in_two_processes_keeps_the_batch(tiny_model, data_file, tmp_path):
    """Two CPU processes under torchrun, as accelerate launch starts them on two GPUs: each takes micro_batch rows
    and accumulates half as many, so an optimizer step still sees `batch` rows; process 0 alone writes."""
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", str(ROOT / "train_lora.py"),
                           "sft", "--data", str(data_file), "--model", str(tiny_model), "--out", str(out), "--rank", "4",
                           "--alpha", "8", "--batch", "4", "--micro-batch", "1", "--max-steps", "2", "--save-steps", "2",
                           "--eval-examples", "2"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    card = json.loads((out / "card.json").read_text())
    assert card["processes"] == 2 and card["steps"] == 2 and proc.stdout.count("sft: ") == 1
    state = json.loads((out / "checkpoints/checkpoint-2/trainer_state.json").read_text())
    assert state["epoch"] == pytest.approx(2 * 4 / card["examples"])  # 2 steps of 4 rows each
    with pytest.raises(ValueError, match="different training run"):  # one process is another run
        train_lora.train(data_file, out, tiny_model, overrides={"rank": 4, "alpha": 8, "batch": 4}, max_steps=2)


DRIVER = """import sys
sys.path.insert(0, sys.argv[1])
import deepspeed
import recipe
import sft_data
import train_lora
deepspeed.init_distributed("gloo")  # accelerate does this on GPUs, nobody on CPUs
data, model, out, zero3 = sys.argv[2:]
cfg = recipe.lora_config("crafter", {"rank": 4, "alpha": 8, "lr": 1e-3, "batch": 4, "micro_batch": 1})
trainer, _, _ = train_lora.sft_trainer(sft_data.read_jsonl(data), model, cfg, out + "/checkpoints", max_steps=2,
                                       eval_examples=2, deepspeed=train_lora.ZERO3 if zero3 == "1" else None)
trainer.train()
trainer.save_model(out)
import torch.distributed
torch.distributed.destroy_process_group()  # gloo's threads stopped before exit (one rank aborted at exit once without)
"""


@pytest.mark.slow
def test_sft_zero3_gives_the_data_parallel_adapter(tiny_model, data_file, tmp_path):
    """configs/ds_zero3.json on two CPU processes: the adapter (gathered from both) equals plain data parallelism's."""
    pytest.importorskip("deepspeed")
    (tmp_path / "drive.py").write_text(DRIVER)
    for zero3 in ("0", "1"):
        proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", str(tmp_path / "drive.py"),
                               str(ROOT), str(data_file), str(tiny_model), str(tmp_path / zero3), zero3], capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr[-3000:]
    from safetensors.numpy import load_file
    ddp, zero3 = load_file(tmp_path / "0/adapter_model.safetensors"), load_file(tmp_path / "1/adapter_model.safetensors")
    assert ddp.keys() == zero3.keys() and all(np.allclose(ddp[k], zero3[k], atol=1e-6) for k in ddp)
    assert max(np.abs(v).max() for k, v in zero3.items() if "lora_B" in k) > 1e-4  # trained, not the zero init

def test_config_validation():
    assert recipe.lora_config("minihack", {})["targets"] == "all-linear"
    assert recipe.lora_config("crafter", {"rank": 16.0})["rank"] == 16
    for bad, msg in [({"rnk": 4}, "unknown LoRA config key 'rnk'"), ({"rank": 0}, "outside"), ({"lr": "fast"}, "a number"),
                     ({"targets": "q_proj; rm -rf"}, "targets"), ({"batch": 3, "micro_batch": 2}, "multiple")]:
        with pytest.raises(ValueError, match=msg):
            recipe.lora_config("crafter", bad)


# ----------------------------------------------------------------------------- training engine

VALID = """Keep every turn that found something or wrote.
```python select.py
def select(example):
    if example["found"] or example["writes"]:
        return True, "keep:hit"
    return False, "drop:miss"
```
```json recipe.json
{"rank": 4, "alpha": 8, "lr": 0.001}
```"""
BROKEN = """```python select.py
def select(example):
    return example["no_such_field"], "keep"
```
```json recipe.json
{}
```"""
BAD_CONFIG = """```python select.py
def select(example):
    return True, "keep:all"
```
```json recipe.json
{"rnk": 4}
```"""


def test_engine_ledger_with_scripted_meta_llm(tiny_model, tmp_path, capsys):
    runs = sft_traces(tmp_path / "train")
    replay = write_trace(tmp_path / "replay.jsonl", [{"log": [turn([], reply="<|SEARCH|>map_notes.txt|tree<|END|><|DONE|>")],
                                                      "plan": [turn([], reply="<|SEARCH|>*|tree<|END|><|ACTION|>Noop<|END|>")]}] * 20)
    args = train_lora.parse_args(["engine", "--env", "crafter", "--iterations", "3", "--runs", str(runs), "--name", "eng",
                                  "--runs-dir", str(tmp_path), "--model", str(tiny_model), "--eval-backend", "scripted",
                                  "--eval-model", str(replay), "--eval-args=--quick",
                                  "--sft-args=--max-steps 2 --batch 1 --eval-examples 2"])
    prompts = []

    def meta(messages):
        prompts.append(messages[-1]["content"])
        return [VALID, BROKEN, BAD_CONFIG][len(prompts) - 1]
    machinery.META.clear()
    machinery.META["llm"] = llm.load("scripted", replies=meta)
    state = recipe.run_engine(args)
    base, (good, broken, bad) = state["start"], state["iterations"]
    assert [(r["iteration"], r["verdict"]) for r in (base, good, broken, bad)] == \
        [(0, "baseline"), (1, "evaluated"), (2, "rejected"), (3, "rejected")]
    assert base["score"]["episodes"] == 1 and good["score"]["mean"] == base["score"]["mean"]  # the scripted replies ignore the adapter
    assert good["reason"] == "+0.00 vs baseline" and good["config"]["rank"] == 4 and good["data"]["examples"] > 0
    assert good["train"]["steps"] == 2 and Path(good["adapter"], "card.json").is_file()
    assert good["rationale"] == "Keep every turn that found something or wrote."
    assert broken["stage"] == "select" and "KeyError" in broken["reason"] and "no_such_field" in broken["reason"]
    assert bad["stage"] == "config" and "unknown LoRA config key 'rnk'" in bad["reason"]
    assert state["incumbent"]["iteration"] == 1  # the best recipe so far
    assert "keep:write_after_retrieval" in prompts[0] and "def select(ex)" in prompts[0]  # default recipe and its stats
    assert "keep:hit" in prompts[1]  # the next proposal sees the best recipe so far
    table = capsys.readouterr().out
    assert "| *1 | evaluated |" in table and "unknown LoRA config key" in table
    assert json.loads((tmp_path / "eng" / "state.json").read_text()) == state
    for k, it in enumerate(state["iterations"], 1):  # every recipe is archived with its verdict
        assert json.loads((tmp_path / "eng" / "candidates" / f"iter{k}" / "verdict.json").read_text()) == it
    machinery.META["llm"] = llm.load("scripted", replies=lambda m: pytest.fail("resumed run asked the meta-LLM"))
    assert recipe.run_engine(args) == state  # finished iterations are not redone
    args.iterations = 4  # more iterations continue the same run; other settings are another run
    args.select_timeout = 1
    with pytest.raises(ValueError, match="holds a different loop \\(select_timeout differ\\)"):
        recipe.run_engine(args)


def proposal_reply(select_source, config="{}"):
    return f"```python select.py\n{select_source}```\n```json recipe.json\n{config}\n```"


@pytest.mark.parametrize("reply, error", [
    ("<select>def select(e):\n    return True, 'k'</select>", "^parse: no ```python select.py block"),
    (proposal_reply("def select(e)\n  return\n"), "^static check: select.py line 1: syntax error"),
    (proposal_reply("def select(example):\n    open('/tmp/x', 'w')\n    return True, 'k'\n"), "^static check: select.py line 2: name open"),
    (proposal_reply("import os\ndef select(example):\n    return True, 'k'\n"), "^static check: .*import of os"),
    (proposal_reply("x = 1\n"), "^select: select.py defines no top-level def select"),
    (proposal_reply("def select(e):\n    return True, 'k'\n", "{rank: 4}"), "^config: recipe.json is not JSON"),
    (proposal_reply("def select(e):\n    return True, 'k'\n", "[4]"), "^config: recipe.json holds no JSON object"),
])
def test_a_bad_proposal_is_rejected_naming_its_stage(reply, error):
    """A proposal is parsed, and its select.py must pass the static hook policy (it then runs only in the jail)."""
    with pytest.raises(ValueError, match=error):
        recipe.parse_proposal(reply, "crafter")


def test_parse_proposal():
    select_source = "import re\ndef select(example):\n    return bool(re.search('tree', example['target'])), 'k'\n"
    source, cfg, why = recipe.parse_proposal("More epochs.\n" + proposal_reply(select_source, '{"epochs": 2}'), "crafter")
    assert source == select_source and cfg["epochs"] == 2 and cfg["rank"] == 256 and why == "More epochs."
