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
The LoRA config (the authors' priors, their bounds) and the training engine are recipe.py.
"""
import argparse
import hashlib
import importlib.util
import json
import math
import os
import time
from pathlib import Path

import cli
import gguf_lora
import llm
import llm_hf
import loop
import recipe
import sft_data

ROOT = Path(__file__).resolve().parent

ATTENTION = ["q_proj", "k_proj", "v_proj", "o_proj"]
ZERO3 = ROOT / "configs" / "ds_zero3.json"  # the authors' 2-GPU setting: bf16 LoRA, DeepSpeed ZeRO-3


# ----------------------------------------------------------------------------- SFT

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
    if env not in recipe.PRIORS:
        raise ValueError(f"pick the LoRA priors with --env {'|'.join(recipe.PRIORS)} (data holds {envs_in_data or 'no env'})")
    cfg = recipe.lora_config(env, overrides or {})
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
    overrides = {k: getattr(args, k) for k in recipe.BOUNDS if getattr(args, k) is not None}  # the --<key> flags
    train(args.data, args.out, args.model, args.env, overrides, max_steps=args.max_steps, save_steps=args.save_steps,
          eval_examples=args.eval_examples, qlora=args.qlora, seed=args.seed, resume=args.resume,
          deepspeed=args.deepspeed or (ZERO3 if args.zero3 else None))


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
    s.add_argument("--env", choices=list(recipe.PRIORS), help="which priors (default: the data's env)")
    for key, (kind, _, _) in recipe.BOUNDS.items():
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
    e.add_argument("--env", required=True, choices=list(recipe.PRIORS))
    e.add_argument("--iterations", type=int, default=3)
    e.add_argument("--runs", nargs="+", help="training traces (default: runs/train-<env>)")
    e.add_argument("--name", help="runs/<name> holds config.json, state.json and candidates/ (default: engine-<env>)")
    e.add_argument("--runs-dir", default=str(ROOT / "runs"))
    loop.add_meta_args(e, recipe.META_MAX_TOKENS)
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
        {"data": cmd_data, "sft": cmd_sft, "gguf": cmd_gguf, "engine": recipe.cmd_engine}[args.cmd](args)
    except (ValueError, FileNotFoundError) as e:
        cli.fail(e)


if __name__ == "__main__":
    llm.preload_cuda_llama()
    main()
