"""
train_lora.py: loop 2 of AutoMem, training the memory specialist.

A data engine keeps the agent's own LOG turns and PLAN memory-consultation turns that are
worth reinforcing, LoRA/QLoRA SFT trains an adapter on them, and a training engine lets a
meta-LLM evolve the data selection and the LoRA config, scored by the two-model evaluation
(specialist for LOG and memory consultation, base model for the world action).

    # 0. training episodes of the base agent, on train_seeds.txt (100 per env, disjoint from seeds.txt)
    python eval.py --env crafter --seeds train_seeds.txt --run-name train-crafter

    # 1. data engine: rebuild each turn's exact chat, keep what select() keeps
    python train_lora.py data --runs runs/train-crafter --out data/crafter.jsonl [--select my_select.py]

    # 2. SFT: LoRA (QLoRA on CUDA), defaults from the authors' per-env priors; re-running resumes
    python train_lora.py sft --data data/crafter.jsonl --out adapters/crafter [--env crafter] [--model Qwen/Qwen2.5-32B-Instruct]
    accelerate launch --config_file configs/accelerate_zero3.yaml train_lora.py sft ... --zero3   # bf16 LoRA, ZeRO-3, 2 GPUs
    python eval.py --env crafter --memory-adapter adapters/crafter --backend transformers --model <same base>

    # 3. training engine: a meta-LLM proposes select() + LoRA config, each recipe is trained and evaluated
    python train_lora.py engine --env crafter --iterations 5 --meta-backend openai --meta-model <name> \\
        --model <base> --eval-backend transformers [--eval-args="--quick"]

    # llama.cpp: SFT on a GGUF base writes OUT/adapter.gguf itself; for another base
    python train_lora.py gguf --adapter adapters/crafter --base qwen2.5-32b-instruct-q4_k_m.gguf

Data: chat JSONL, one {"messages": [system, user, (assistant, user)*, assistant], "meta": {...}}
per line; the loss is on the last assistant message only. A summary sits beside it (x.summary.json).
The data engine (turn selection, the chat JSONL) is sft_data.py, its rules the one function
sft_data.select; `--select FILE` swaps in another. The GGUF LoRA converter is gguf_lora.py.
SFT writes OUT/adapter_model.safetensors + adapter_config.json (peft), OUT/card.json (data hash,
config, base model, losses) and OUT/checkpoints/ (resumable).
The engine runs on loop 1's machinery (loop.py): runs/<name>/ holds config.json, state.json (the
baseline, the best recipe as incumbent, one record per recipe; re-running resumes), evals/base/ and
candidates/iterK/ (prompt.txt, reply.txt, select.py, data, adapter, sft.log, eval run, verdict.json).
The meta-LLM answers with whole files, "```python select.py" and "```json recipe.json" (the LoRA
config). A proposed select() must pass the static hook policy (jail.check_source) and runs only in
the jail (jail.py, as `data --jail` runs it), all of it within --select-timeout; evaluations run
eval.py in this process, SFT runs as a subprocess (its GPU memory is freed when it ends).
"""
import argparse
import gc
import hashlib
import importlib.util
import inspect
import json
import math
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import cli
import eval as evaluation
import gguf_lora
import jail
import llm
import llm_hf
import loop
import sft_data
import trace_format

ROOT = Path(__file__).resolve().parent

# The authors' LoRA settings per env (PROTOCOL.md). batch is the effective batch (micro_batch x accumulation).
PRIORS = {
    "crafter": {"rank": 256, "alpha": 512, "lr": 5e-5, "epochs": 4, "batch": 32, "targets": "attention"},
    "minihack": {"rank": 128, "alpha": 256, "lr": 5e-5, "epochs": 3, "batch": 16, "targets": "all-linear"},
    "nethack": {"rank": 256, "alpha": 512, "lr": 5e-5, "epochs": 1, "batch": 32, "targets": "all-linear"},
}
COMMON = {"dropout": 0.0, "max_len": 16384, "warmup": 0.05, "micro_batch": 1}  # cutoff 16384, cosine schedule
BOUNDS = {  # what a recipe may set: (type, low, high)
    "rank": (int, 1, 1024), "alpha": (float, 0.01, 8192), "dropout": (float, 0.0, 0.5), "lr": (float, 1e-7, 1e-2),
    "epochs": (float, 0.01, 20), "batch": (int, 1, 1024), "micro_batch": (int, 1, 64),
    "max_len": (int, 128, 131072), "warmup": (float, 0.0, 0.5), "targets": (str, None, None),
}
ATTENTION = ["q_proj", "k_proj", "v_proj", "o_proj"]
ZERO3 = ROOT / "configs" / "ds_zero3.json"  # the authors' 2-GPU setting: bf16 LoRA, DeepSpeed ZeRO-3


# ----------------------------------------------------------------------------- SFT

def lora_config(env, overrides):
    """The env's priors with the given keys replaced; ValueError names a bad key or value."""
    cfg = {**COMMON, **PRIORS[env]}
    for key, value in overrides.items():
        if key not in BOUNDS:
            raise ValueError(f"unknown LoRA config key {key!r}: use {', '.join(BOUNDS)}")
        kind, low, high = BOUNDS[key]
        if kind is str:
            if not isinstance(value, str) or not re.fullmatch(r"attention|all-linear|[a-z_0-9]+(,[a-z_0-9]+)*", value):
                raise ValueError(f"targets {value!r}: use 'attention', 'all-linear' or module names like 'q_proj,v_proj'")
        elif isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and value != int(value)):
            raise ValueError(f"{key} must be {'an integer' if kind is int else 'a number'}, got {value!r}")
        elif not low <= value <= high:
            raise ValueError(f"{key}={value} is outside [{low}, {high}]")
        cfg[key] = kind(value) if kind is not str else value
    if cfg["batch"] % cfg["micro_batch"]:
        raise ValueError(f"batch {cfg['batch']} must be a multiple of micro_batch {cfg['micro_batch']}")
    return cfg


def sft_dataset(tok, rows, max_len):
    """The chats as TRL's conversational prompt-completion examples: SFTTrainer renders the prompt with the
    generation prompt, as at inference, and puts the loss on the completion only (the last assistant message
    with its end-of-turn tokens). Chats over max_len tokens are dropped, not truncated."""
    import datasets
    fits = [r["messages"] for r in rows
            if len(tok.apply_chat_template(r["messages"], tokenize=True, return_dict=True)["input_ids"]) <= max_len]
    return datasets.Dataset.from_list([{"prompt": m[:-1], "completion": m[-1:]} for m in fits])


def load_base(model, qlora):
    """(tokenizer, model): a hub id / local dir, or a .gguf file (dequantized); nf4 4-bit when qlora."""
    import torch
    if str(model).endswith(".gguf"):
        llm.gguf_path(model)
        if qlora:
            raise ValueError("QLoRA needs a safetensors model (hub id or folder); a GGUF base trains as LoRA: --qlora off")
    if qlora and importlib.util.find_spec("bitsandbytes") is None:
        raise ValueError("QLoRA needs bitsandbytes: pip install bitsandbytes (or pass --qlora off)")
    return llm_hf.load_hf(model, torch.bfloat16 if torch.cuda.is_available() else torch.float32, load_4bit=qlora)


def lora_peft_config(cfg):
    import peft
    targets = {"attention": ATTENTION, "all-linear": "all-linear"}.get(cfg["targets"]) or cfg["targets"].split(",")
    return peft.LoraConfig(r=cfg["rank"], lora_alpha=cfg["alpha"], lora_dropout=cfg["dropout"], target_modules=targets,
                           bias="none", task_type="CAUSAL_LM")


def sft_trainer(rows, model, cfg, out_dir, use_4bit=False, deepspeed=None, max_steps=None, save_steps=25,
                eval_examples=16, seed=0):
    """(TRL SFTTrainer with LoRA on `model` over the chat rows, chats dropped as too long, max_len). A 4-bit base gets
    TRL's QLoRA handling (adapter in bf16, gradient checkpointing); `deepspeed` is a DeepSpeed JSON config."""
    import torch
    import trl
    cuda = torch.cuda.is_available()
    world = int(os.environ.get("WORLD_SIZE", 1))  # processes started by accelerate launch / torchrun
    if cfg["batch"] % (cfg["micro_batch"] * world):
        raise ValueError(f"batch {cfg['batch']} must be a multiple of micro_batch {cfg['micro_batch']} x {world} processes")
    args = trl.SFTConfig(  # before the model: under ZeRO-3 from_pretrained then loads it already partitioned
        # eval one chat at a time: the loss before/after is then the mean over chats whatever the micro-batch (a batch
        # of 4 pools its tokens: 0.51 against 0.38 on the same 8 MiniHack chats, long replies weighing more)
        output_dir=str(out_dir), per_device_train_batch_size=cfg["micro_batch"], per_device_eval_batch_size=1,
        gradient_accumulation_steps=cfg["batch"] // (cfg["micro_batch"] * world), learning_rate=cfg["lr"],
        num_train_epochs=cfg["epochs"], max_steps=max_steps or -1, lr_scheduler_type="cosine", logging_steps=1,
        save_strategy="steps", save_steps=save_steps, save_total_limit=2, report_to="none", seed=seed, bf16=cuda,
        use_cpu=not cuda, gradient_checkpointing=cuda, deepspeed=deepspeed and str(deepspeed),
        optim="paged_adamw_8bit" if use_4bit else "adamw_torch", max_length=None, completion_only_loss=True,
        eval_on_start=True)  # the loss before training; evaluate() before train() breaks under ZeRO-3 (transformers#44889)
    tok, net = load_base(model, use_4bit)
    max_len = min(cfg["max_len"], getattr(net.config, "max_position_embeddings", cfg["max_len"]))
    data = sft_dataset(tok, rows, max_len)
    if not len(data):
        raise ValueError(f"all {len(rows)} examples are longer than max_len {max_len} tokens: raise --max-len")
    args.warmup_steps = math.ceil(cfg["warmup"] * (max_steps or math.ceil(math.ceil(len(data) / cfg["batch"]) * cfg["epochs"])))
    trainer = trl.SFTTrainer(model=net, args=args, train_dataset=data, processing_class=tok, peft_config=lora_peft_config(cfg),
                             eval_dataset=data.select(range(min(max(1, eval_examples), len(data)))))
    return trainer, len(rows) - len(data), max_len


def run_id(cfg, data_sha):
    return hashlib.sha256(json.dumps([cfg, data_sha], sort_keys=True).encode()).hexdigest()[:12]


def sft_setup(rows, model, env, overrides, qlora, deepspeed):
    """(env, LoRA config, 4-bit or not, DeepSpeed config, processes) of a run; ValueError names an impossible one."""
    import torch
    envs_in_data = sorted({r.get("meta", {}).get("env") for r in rows} - {None})
    env = env or (envs_in_data[0] if len(envs_in_data) == 1 else None)
    if env not in PRIORS:
        raise ValueError(f"pick the LoRA priors with --env {'|'.join(PRIORS)} (data holds {envs_in_data or 'no env'})")
    cfg = lora_config(env, overrides or {})
    cuda = torch.cuda.is_available()
    deepspeed = deepspeed or os.environ.get("ACCELERATE_DEEPSPEED_CONFIG_FILE")  # an accelerate config naming a DeepSpeed file
    if qlora == "on" and not cuda:
        raise ValueError("--qlora on needs a CUDA GPU: pass --qlora off (fp32 LoRA on CPU)")
    world = int(os.environ.get("WORLD_SIZE", 1))  # processes started by accelerate launch / torchrun
    several = bool(deepspeed) or world > 1
    if several and qlora == "on":
        raise ValueError("QLoRA trains on one GPU; several processes (accelerate launch, --zero3, --deepspeed) train "
                         "bf16 LoRA: drop --qlora on")
    if deepspeed and not (cuda and importlib.util.find_spec("deepspeed")):
        raise ValueError("--zero3/--deepspeed need CUDA GPUs and DeepSpeed (pip install deepspeed)")
    use_4bit = qlora == "on" or (qlora == "auto" and cuda and not several and not model.endswith(".gguf"))
    return env, cfg, use_4bit, deepspeed, world


def claim_out(out, rid, settings, data_sha, main):
    """The card when `out` already holds this run's adapter; else None, once `out` holds no other run's
    checkpoints (ValueError) and its checkpoints folder is marked as this run's (by the main process)."""
    ckpt_dir, card_path = out / "checkpoints", out / "card.json"
    if card_path.is_file() and json.loads(card_path.read_text()).get("run_id") == rid:
        print(f"sft: {out} already holds this adapter (run {rid}); delete it to train again")
        return json.loads(card_path.read_text())
    marker = ckpt_dir / "run.json"
    if marker.is_file() and json.loads(marker.read_text())["run_id"] != rid:
        raise ValueError(f"{out} holds checkpoints of a different training run (other data or config): "
                         f"pass another --out or delete {out}")
    if main:
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        marker.write_text(json.dumps({"run_id": rid, **settings, "data_sha256": data_sha}, indent=1))
    return None


def train(data, out, model=None, env=None, overrides=None, max_steps=None, save_steps=25, eval_examples=16,
          qlora="auto", seed=0, resume=None, deepspeed=None):
    """LoRA SFT of `model` on the chat JSONL `data`; the adapter and card.json land in `out`. Returns the card.
    Under accelerate launch every process runs this; the main one writes the files."""
    import peft
    import torch
    import transformers
    import trl
    from transformers.trainer_utils import get_last_checkpoint
    model = str(model or llm.embedded_model())
    rows = sft_data.read_jsonl(data)
    env, cfg, use_4bit, deepspeed, world = sft_setup(rows, model, env, overrides, qlora, deepspeed)
    data_sha = hashlib.sha256(Path(data).read_bytes()).hexdigest()
    settings = {**cfg, "env": env, "model": model, "max_steps": max_steps, "qlora": use_4bit, "seed": seed}
    if deepspeed or world > 1:  # single-process runs keep the run ids they had before these options
        settings |= {"deepspeed": deepspeed and Path(deepspeed).name, "processes": world}
    rid, out, main = run_id(settings, data_sha), Path(out), int(os.environ.get("RANK", 0)) == 0
    finished = claim_out(out, rid, settings, data_sha, main)
    if finished:
        return finished

    t0 = time.time()
    trainer, dropped, max_len = sft_trainer(rows, model, cfg, out / "checkpoints", use_4bit, deepspeed, max_steps,
                                            save_steps, eval_examples, seed)
    examples = len(trainer.train_dataset)
    resume = resume or get_last_checkpoint(str(out / "checkpoints"))
    if resume and main:
        print(f"sft: resuming from {resume}")
    trainer.train(resume_from_checkpoint=resume)
    loss_before = next(h["eval_loss"] for h in trainer.state.log_history if "eval_loss" in h)  # step 0 (eval_on_start)
    loss_after = trainer.evaluate()["eval_loss"]
    trainer.model.peft_config["default"].base_model_name_or_path = model  # what llm.py loads it onto
    trainer.save_model(str(out))  # the adapter (gathered from all processes under ZeRO-3)
    if not main:
        return None
    cuda = torch.cuda.is_available()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    card = {
        "run_id": rid, "base_model": model, "env": env, "config": cfg, "qlora": use_4bit, "device": "cuda" if cuda else "cpu",
        "deepspeed": deepspeed and str(deepspeed), "processes": world,
        "max_steps": max_steps, "seed": seed, "data": str(data), "data_sha256": data_sha, "examples": examples,
        "dropped_over_max_len": dropped, "max_len": max_len,
        "data_summary": json.loads(sft_data.summary_path(data).read_text()) if sft_data.summary_path(data).is_file() else None,
        "steps": trainer.state.global_step, "resumed_from": resume and str(resume),
        "eval_examples": min(eval_examples, examples), "loss_before": loss_before, "loss_after": loss_after,
        "train_losses": losses, "peak_gpu_gib": round(torch.cuda.max_memory_allocated() / 2 ** 30, 2) if cuda else None,
        "seconds": round(time.time() - t0, 1),
        "versions": {m.__name__: m.__version__ for m in (torch, transformers, peft, trl)},
    }
    return write_card(card, out)


def write_card(card, out):
    """The llama.cpp adapter (for a GGUF base), README.md and card.json (last: it marks a finished run) in `out`."""
    model, env, examples, data_sha = card["base_model"], card["env"], card["examples"], card["data_sha256"]
    if model.endswith(".gguf"):
        try:
            card["gguf"] = str(gguf_lora.to_gguf(out, model))
        except ValueError as e:
            card["gguf"] = None
            print(f"sft: no llama.cpp adapter ({e})")
    (out / "README.md").write_text(  # in place of peft's blank model card
        f"# AutoMem memory specialist ({env})\n\nLoRA adapter for `{model}`, trained by `train_lora.py sft` on "
        f"{examples} examples of `{card['data']}` (sha256 {data_sha[:16]}...), {card['steps']} optimizer steps; "
        f"loss {card['loss_before']:.4f} -> {card['loss_after']:.4f}.\n\nConfig: `{json.dumps(card['config'])}`\n\n"
        f"Use: `python eval.py --env {env} --backend transformers --model {model} --memory-adapter {out}`"
        + (f" or, with llama.cpp, `--memory-adapter {card['gguf']}`" if card.get("gguf") else "") + ".\n"
        "Everything else is in card.json.\n")
    (out / "card.json").write_text(json.dumps(card, indent=1))
    print(f"sft: {examples} examples ({card['dropped_over_max_len']} over {card['max_len']} tokens dropped), "
          f"{card['steps']} steps, loss {card['loss_before']:.4f} -> {card['loss_after']:.4f} on {card['eval_examples']} "
          f"examples, {card['seconds']} s -> {out}")
    return card


def cmd_sft(args):
    overrides = {k: getattr(args, k) for k in BOUNDS if getattr(args, k) is not None}  # the --<key> flags
    train(args.data, args.out, args.model, args.env, overrides, max_steps=args.max_steps, save_steps=args.save_steps,
          eval_examples=args.eval_examples, qlora=args.qlora, seed=args.seed, resume=args.resume,
          deepspeed=args.deepspeed or (ZERO3 if args.zero3 else None))


# ----------------------------------------------------------------------------- training engine

META_MAX_TOKENS = 4096  # tokens of the meta-LLM's reply (its default; --meta-max-tokens)
RECIPE_FILES = ("select.py", "recipe.json")  # what a proposal holds, as fenced files (loop.parse_files)
META_PROMPT = """You improve the training recipe of a "memory specialist": a LoRA adapter trained on an LLM agent's own turns in {env}.
The agent keeps a folder of text files as memory. Each game step it runs LOG (it sees what its last action did and records what is worth
remembering with SEARCH/READ/TAIL/COUNT and APPEND/WRITE/CREATE/UPSERT ops, then <|DONE|>) and PLAN (it consults memory with read-only
ops, then commits one game action). A selection function picks which recorded turns to train on; after training, the specialist runs LOG
and the memory consultation of PLAN while the base model commits the action. Score: game progression (%) on fixed evaluation seeds;
the baseline is the base model alone.

Each candidate turn reaches select(example) as a dict with these keys:
{fields}

The current best selection function{best_note}:
```python
{source}
```
What it keeps from the training traces: {stats}

LoRA config keys, with the defaults for {env}: {defaults}
Bounds: {bounds}; targets is "attention", "all-linear" or module names like "q_proj,v_proj"; batch is the effective batch.

Recipes tried so far (iteration 0: the baseline):
{ledger}

Propose one new recipe that you expect to score higher than every recipe above. Reply in exactly this format (a program
parses it; whole files):
RATIONALE: what you change and why.
```python select.py
def select(example):
    ...
    return keep, "rule name"
```
```json recipe.json
{{"rank": 64, "lr": 0.0001}}
```
select must be deterministic plain Python and return (bool, str); it may import only {imports}, and touches no file,
process or network. recipe.json is a JSON object with any of the LoRA config keys above (missing keys keep the defaults)."""


def parse_proposal(text, env):
    """(select source, LoRA config, rationale) from a meta-LLM reply; ValueError '<stage>: <what is wrong>'
    (stage parse, static check, select or config). The source passed the static hook policy; it then runs only in the jail."""
    try:
        files, rationale = loop.parse_files(text, RECIPE_FILES, required=RECIPE_FILES)
    except ValueError as e:
        raise ValueError(f"parse: {e}") from None
    source = files["select.py"]
    try:
        jail.check_source(source, name="select.py")  # syntax, allowed imports, no file/process access, no "_" names
    except ValueError as e:
        raise ValueError(f"static check: {e}") from None
    if not re.search(r"^def select\s*\(", source, re.M):
        raise ValueError("select: select.py defines no top-level def select(example)")
    try:
        overrides = json.loads(files["recipe.json"])
    except json.JSONDecodeError as e:
        raise ValueError(f"config: recipe.json is not JSON ({e.msg} at char {e.pos})") from None
    try:
        if not isinstance(overrides, dict):
            raise ValueError("recipe.json holds no JSON object")
        return source, lora_config(env, overrides), rationale
    except ValueError as e:
        raise ValueError(f"config: {e}") from None


def run_logged(cmd, log, timeout=None):
    """Run a command with its output in `log`; return (ok, reason: its last error line)."""
    with open(log, "w") as f:
        f.write(" ".join(map(shlex.quote, cmd)) + "\n")
        f.flush()
        try:
            rc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=ROOT, timeout=timeout).returncode
        except subprocess.TimeoutExpired:
            return False, f"timed out after {timeout} s"
    if rc == 0:
        return True, ""
    lines = [ln for ln in Path(log).read_text().splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("error:") or "Error" in ln.split(":")[0]]
    return False, (errors or lines or [f"exit code {rc}"])[-1][:300]


def select_data(config, select_path, out):
    """The training data a proposed select() keeps, the function running in the jail, all of it within
    select_timeout s; returns the data's summary (kept: a resumed iteration reuses the data)."""
    if sft_data.summary_path(out).is_file():
        return json.loads(sft_data.summary_path(out).read_text())
    jailed, deadline = sft_data.load_select(select_path, jailed=True), time.monotonic() + config["select_timeout"]

    def timed(example):
        if time.monotonic() > deadline:
            raise ValueError(f"not finished after {config['select_timeout']:g} s")
        return jailed(example)
    return sft_data.build_dataset(config["runs"], out, timed)


def evaluate_recipe(config, eval_dir, adapter=None):
    """The two-model evaluation in this process (the base model alone when adapter is None): progression and
    the memory metrics the meta-LLM sees. SystemExit (a model that fails) stops the engine: re-run to resume."""
    argv = ["--backend", config["eval_backend"], "--model", config["eval_model"], "--no-replay",
            *shlex.split(config["eval_args"])]
    if adapter:  # the adapter folder: eval.py finds the GGUF LoRA that sft writes there when llama.cpp needs it
        argv += ["--memory-adapter", str(adapter)]
    try:
        result = loop.evaluate(argv, config["env"], eval_dir)
    finally:  # let the models go: the next SFT subprocess needs the GPU memory they hold
        evaluation.WORKER.clear()
        gc.collect()
        if "torch" in sys.modules and sys.modules["torch"].cuda.is_available():
            sys.modules["torch"].cuda.empty_cache()
    keys = ("log_writes_per_search", "empty_search_rate", "redundant_write_rate", "unproductive_rate", "invalid_action_rate")
    return {**result["progression"], "episodes": result["episodes"],
            "behaviour": {k: result["behaviour"].get(k) for k in keys}}


def ledger_table(state):
    """The recipes as a Markdown table, the baseline first; * marks the best evaluated recipe."""
    base, best = state["start"], state["incumbent"]
    rows = []
    for r in [base] + state["iterations"]:
        score, cfg, tr = r.get("score"), r.get("config") or {}, r.get("train") or {}
        rows.append([("*" if best and r["iteration"] == best["iteration"] else "") + str(r["iteration"]), r["verdict"],
                     f"{score['mean']:.2f}±{score['se']:.2f}" if score else "",
                     f"{score['mean'] - base['score']['mean']:+.2f}" if score and r is not base else "",
                     (r.get("data") or {}).get("examples", ""), cfg.get("rank", ""), cfg.get("lr", ""),
                     cfg.get("epochs", ""), cfg.get("targets", ""),
                     f"{tr['loss_before']:.3f}->{tr['loss_after']:.3f}" if tr else "", r.get("reason", "")[:90]])
    return cli.markdown_table(["iter", "verdict", "progression", "vs base", "examples", "rank", "lr", "epochs", "targets",
                               "loss before->after", "reason"], rows)


def meta_prompt(env, state, default_stats):
    """The meta-LLM's input: the select() fields, the best recipe so far (or the hand-written one) and every recipe tried."""
    best = state["incumbent"]
    source = Path(best["select"]).read_text() if best else inspect.getsource(sft_data.select)
    stats = best["data"] if best else default_stats
    ledger = [json.dumps({**{k: r.get(k) for k in ("iteration", "verdict", "score", "reason", "config", "train")},
                          "data": {k: (r.get("data") or {}).get(k) for k in ("examples", "rules", "routines")}})
              for r in [state["start"]] + state["iterations"]]
    return META_PROMPT.format(
        env=env, fields="\n".join(f"  {k}: {v}" for k, v in sft_data.FIELDS.items()),
        best_note=f" (iteration {best['iteration']}, progression {best['score']['mean']:.2f})" if best else " (the hand-written default)",
        source=source.rstrip(), stats=json.dumps({k: stats.get(k) for k in ("examples", "rules", "envs", "routines")}),
        defaults=json.dumps(lora_config(env, {})), bounds=json.dumps({k: v[1:] for k, v in BOUNDS.items() if v[0] is not str}),
        ledger="\n".join(ledger), imports=", ".join(jail.ALLOWED_IMPORTS))


def recipe_iteration(config, state, k, it_dir, meta_llm, default_stats):
    """Recipe k: propose (meta-LLM) -> check -> data (select() in the jail) -> SFT (a subprocess) -> two-model
    evaluation; returns its record, carrying it as the incumbent when it beats the best so far."""
    t0 = time.time()
    reply, proposal = loop.ask(meta_llm, it_dir, config["meta"]["seed"] + k,
                               lambda: meta_prompt(config["env"], state, default_stats))
    record = {"iteration": k, "date": proposal["date"], "select": str(it_dir / "select.py")}

    def verdict(name, stage, reason):
        record.update(verdict=name, stage=stage, reason=reason, seconds=round(time.time() - t0, 1))
        loop.write_json(it_dir / "verdict.json", record)
        return record

    try:
        source, record["config"], record["rationale"] = parse_proposal(reply, config["env"])
    except ValueError as e:
        return verdict("rejected", str(e).split(":")[0], str(e))
    record["selector_sha256"] = hashlib.sha256(source.encode()).hexdigest()[:12]
    (it_dir / "select.py").write_text(source + "\n")
    try:
        record["data"] = select_data(config, it_dir / "select.py", it_dir / "data.jsonl")
    except ValueError as e:  # select() raised, timed out or kept nothing (a HookError is a ValueError)
        return verdict("rejected", "select", f"select: {e}")
    adapter = it_dir / "adapter"
    flags = [f"--{key.replace('_', '-')}={v}" for key, v in record["config"].items()]
    ok, reason = run_logged([sys.executable, str(ROOT / "train_lora.py"), "sft", "--data", str(it_dir / "data.jsonl"),
                             "--out", str(adapter), "--env", config["env"], "--model", config["model"], *flags,
                             *shlex.split(config["sft_args"])], it_dir / "sft.log")
    if not ok:
        return verdict("failed", "sft", f"sft: {reason}")
    card = json.loads((adapter / "card.json").read_text())
    record["train"] = {key: card[key] for key in ("loss_before", "loss_after", "steps", "examples", "seconds")}
    record.update(adapter=str(adapter), score=evaluate_recipe(config, it_dir / "eval", adapter))
    verdict("evaluated", "eval", f"{record['score']['mean'] - state['start']['score']['mean']:+.2f} vs baseline")
    best = state["incumbent"]
    if best is None or record["score"]["mean"] > best["score"]["mean"]:
        return {**record, "incumbent": dict(record)}
    return record


def engine_config(args):
    """Everything that defines an engine run (config.json: a resumed run must match)."""
    model = str(args.model or llm.embedded_model())
    if args.eval_backend == "llamacpp" and not model.endswith(".gguf"):
        raise ValueError("--eval-backend llamacpp runs the adapter.gguf that sft writes for a GGUF base only: pass a .gguf "
                         "--model, or --eval-backend transformers")
    return {"run_name": args.name, "loop": "engine", "env": args.env, "runs": [str(Path(r).resolve()) for r in args.runs],
            "model": model, "eval_backend": args.eval_backend, "eval_model": str(args.eval_model or model),
            "eval_args": args.eval_args, "sft_args": args.sft_args, "seeds": str(Path(args.seeds).resolve()),
            "select_timeout": args.select_timeout, "meta": loop.meta_config(args, META_MAX_TOKENS)}


def run_engine(args):
    """The engine on loop.py's machinery: the baseline evaluated once, then recipes until args.iterations are done."""
    config = engine_config(args)
    run_dir = loop.prepare_run_dir(config, args.runs_dir)
    traces = [trace_format.read_trace(p)[0] for p in sft_data.trace_paths(config["runs"])]
    leaked = sorted({h["seed"] for h in traces if h and h.get("env") == args.env}
                    & set(evaluation.read_seeds(config["seeds"]).get(args.env, [])))
    if leaked:
        raise ValueError(f"training traces use evaluation seeds {leaked} of {args.seeds}: record training episodes "
                         f"with eval.py --seeds <a file of other seeds>")
    default = run_dir / "default_recipe.jsonl"  # what the hand-written select() keeps: shown to the meta-LLM
    default_summary = sft_data.summary_path(default)
    default_stats = json.loads(default_summary.read_text()) if default_summary.is_file() else \
        sft_data.build_dataset(config["runs"], default)
    meta_llm = loop.load_meta(config["meta"], cwd=run_dir, read_dirs=[run_dir, *config["runs"]])

    def first():
        score = evaluate_recipe(config, run_dir / "evals" / "base")
        return {"start": {"iteration": 0, "verdict": "baseline", "stage": "eval", "score": score,
                          "reason": "base model alone"}, "incumbent": None}
    state = loop.run(run_dir, args.iterations, first,
                     lambda state, k, it_dir: recipe_iteration(config, state, k, it_dir, meta_llm, default_stats))
    print(ledger_table(state), flush=True)
    return state


def cmd_engine(args):
    usable, why = jail.available()
    if not usable:
        raise ValueError(f"the jail does not work here ({why}): the meta-LLM's select() runs only in it")
    try:
        state = run_engine(args)
    except llm.BackendError as e:  # state.json keeps every finished iteration: re-running resumes
        raise ValueError(f"meta-LLM call failed ({e}); re-run the same command to resume") from None
    best = state["incumbent"]
    print(f"engine: best recipe: iteration {best['iteration']} ({best['adapter']})" if best else "engine: no recipe evaluated yet")


# ----------------------------------------------------------------------------- CLI

def cmd_data(args):
    select = sft_data.load_select(args.select, args.jail) if args.select else sft_data.select
    sft_data.print_summary(sft_data.build_dataset(args.runs, args.out, select), args.out)


def cmd_gguf(args):
    path = gguf_lora.to_gguf(args.adapter, args.base, args.out)
    print(f"gguf: {path} (load with llm.load('llamacpp', {args.base!r}, lora_path={str(path)!r}))")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)

    d = sub.add_parser("data", help="traces -> chat JSONL of the turns worth reinforcing")
    d.add_argument("--runs", nargs="+", required=True, help="run folders (runs/<name>) or trace files")
    d.add_argument("--out", required=True, help="output JSONL (a .summary.json lands beside it)")
    d.add_argument("--select", help="a Python file defining select(example) -> (keep, rule) (default: the built-in rules)")
    d.add_argument("--jail", action="store_true", help="run --select's file in the jail (jail.py), as the engine does "
                   "with the meta-LLM's recipes")

    s = sub.add_parser("sft", help="LoRA / QLoRA SFT on a data JSONL")
    s.add_argument("--data", required=True)
    s.add_argument("--out", required=True, help="adapter folder (re-running the same command resumes)")
    s.add_argument("--model", help="hub id, local folder or .gguf (default: the embedded SmolLM2-135M GGUF)")
    s.add_argument("--env", choices=list(PRIORS), help="which priors (default: the data's env)")
    for key, (kind, _, _) in BOUNDS.items():
        s.add_argument(f"--{key.replace('_', '-')}", type=kind, help=f"override the prior {key}")
    s.add_argument("--max-steps", type=int, help="optimizer steps (overrides epochs)")
    s.add_argument("--save-steps", type=int, default=25, help="checkpoint every N optimizer steps")
    s.add_argument("--eval-examples", type=int, default=16, help="loss before/after on the first N examples")
    s.add_argument("--qlora", choices=["auto", "on", "off"], default="auto", help="auto: 4-bit nf4 on CUDA (not for GGUF bases)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--resume", help="checkpoint folder to resume from (default: the latest in OUT/checkpoints)")
    s.add_argument("--zero3", action="store_true", help="the authors' multi-GPU recipe, bf16 LoRA under DeepSpeed ZeRO-3 "
                   f"({ZERO3.relative_to(ROOT)}): accelerate launch --config_file configs/accelerate_zero3.yaml train_lora.py sft ...")
    s.add_argument("--deepspeed", help="a DeepSpeed JSON config instead (bf16 LoRA; --zero3 is --deepspeed configs/ds_zero3.json)")

    g = sub.add_parser("gguf", help="peft LoRA -> llama.cpp LoRA GGUF")
    g.add_argument("--adapter", required=True)
    g.add_argument("--base", required=True, help="the base model as .gguf")
    g.add_argument("--out", help="default: ADAPTER/adapter.gguf")

    e = sub.add_parser("engine", help="meta-LLM loop over data selection and LoRA config")
    e.add_argument("--env", required=True, choices=list(PRIORS))
    e.add_argument("--iterations", type=int, default=3)
    e.add_argument("--runs", nargs="+", help="training traces (default: runs/train-<env>)")
    e.add_argument("--name", help="runs/<name> holds config.json, state.json and candidates/ (default: engine-<env>)")
    e.add_argument("--runs-dir", default=str(ROOT / "runs"))
    loop.add_meta_args(e, META_MAX_TOKENS)
    e.add_argument("--model", help="base model to train (default: embedded GGUF)")
    e.add_argument("--eval-backend", default="llamacpp", help="eval.py --backend (transformers loads the peft adapter; "
                   "llamacpp its adapter.gguf)")
    e.add_argument("--eval-model", help="eval.py --model (default: --model)")
    e.add_argument("--eval-args", default="", help='more eval.py arguments, e.g. --eval-args="--quick --workers 4"')
    e.add_argument("--sft-args", default="", help='more sft arguments, e.g. --sft-args="--max-steps 50"')
    e.add_argument("--seeds", default=str(ROOT / "seeds.txt"), help="evaluation seeds (training traces must avoid them)")
    e.add_argument("--select-timeout", type=float, default=600, help="seconds a proposed select() may take on the traces")
    args = p.parse_args(argv)
    if args.cmd == "engine":
        args.runs = args.runs or [str(ROOT / "runs" / f"train-{args.env}")]
        args.name = args.name or f"engine-{args.env}"
    return args


def main(argv=None):
    args = parse_args(argv)
    try:
        {"data": cmd_data, "sft": cmd_sft, "gguf": cmd_gguf, "engine": cmd_engine}[args.cmd](args)
    except (ValueError, FileNotFoundError) as e:
        cli.fail(e)


if __name__ == "__main__":
    llm.preload_cuda_llama()
    main()
