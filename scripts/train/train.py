#!/usr/bin/python3
"""Train the small BitNet b1.58 model on the TinyStories fixture (first 95%).

Usage (after bpe.py):
  /usr/bin/python3 scripts/train/train.py --data build-train --out build-train/run [options]

Deterministic: fixed seed, torch.use_deterministic_algorithms(True), no TF32; the same
seed, data and device type give the same loss curve. Writes OUT/train.log (train loss,
validation loss and perplexity at intervals), OUT/best.pt (lowest validation loss) and
OUT/last.pt.
"""
import argparse
import json
import math
import os
import sys
import time

os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from model import BitNet, Config, bitlinears, save_compact  # noqa: E402


def load_stream(path):
    return torch.from_numpy(np.fromfile(path, dtype=np.uint16).astype(np.int64))


@torch.no_grad()
def evaluate(model, val, ctx, device, bs=16):
    """Per-token loss on the whole held-out stream: non-overlapping windows of ctx+1 tokens
    (stride ctx); each token after the first of the stream is predicted once, with up to
    ctx tokens of context from its window. Eval mode (exact quantized inference)."""
    model.eval()
    n = val.numel()
    starts = list(range(0, n - 1, ctx))
    tot, cnt = 0.0, 0
    for i in range(0, len(starts), bs):
        chunk = starts[i:i + bs]
        L = max(min(ctx + 1, n - s) for s in chunk)
        xs, ys, ms = [], [], []
        for s in chunk:
            w = val[s:s + ctx + 1]
            k = w.numel()
            x = torch.zeros(L - 1, dtype=torch.long)
            y = torch.zeros(L - 1, dtype=torch.long)
            m = torch.zeros(L - 1)
            x[:k - 1] = w[:-1]
            y[:k - 1] = w[1:]
            m[:k - 1] = 1
            xs.append(x); ys.append(y); ms.append(m)
        x = torch.stack(xs).to(device); y = torch.stack(ys).to(device); m = torch.stack(ms).to(device)
        logits = model(x)
        l = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).double(), y.reshape(-1), reduction="none")
        tot += float((l * m.reshape(-1).double()).sum())
        cnt += int(m.sum())
    model.train()
    return tot / cnt


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default="build-train")
    ap.add_argument("--out", default="build-train/run")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--d", type=int, default=384)
    ap.add_argument("--layers", type=int, default=10)
    ap.add_argument("--heads", type=int, default=6)
    ap.add_argument("--kv-heads", type=int, default=2)
    ap.add_argument("--ffn", type=int, default=1024)
    ap.add_argument("--ctx", type=int, default=256)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--warmup", type=int, default=200)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--min-lr-frac", type=float, default=0.1)
    ap.add_argument("--wd", type=float, default=0.1)
    ap.add_argument("--dropout", type=float, default=0.1)
    ap.add_argument("--eval-every", type=int, default=100)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--stop-at", type=int, default=0,
                    help="end training after this step (the LR schedule still follows --steps); 0 = --steps")
    ap.add_argument("--time-limit", type=float, default=0, help="stop (with a final eval) after this many seconds; 0 = none")
    args = ap.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    torch.use_deterministic_algorithms(True)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cudnn.benchmark = False
    dev = torch.device(args.device)

    tokj = json.load(open(os.path.join(args.data, "tokenizer.json"), encoding="utf-8"))
    train = load_stream(os.path.join(args.data, "train.bin"))
    val = load_stream(os.path.join(args.data, "val.bin"))
    cfg = Config(n_vocab=len(tokj["tokens"]), d=args.d, n_layer=args.layers, n_head=args.heads,
                 n_head_kv=args.kv_heads, ffn=args.ffn, ctx=max(512, args.ctx), dropout=args.dropout,
                 bos_id=tokj["bos_id"], eos_id=tokj["eos_id"])
    model = BitNet(cfg).to(dev)
    emb, tern, norm = model.param_counts()
    os.makedirs(args.out, exist_ok=True)
    logf = open(os.path.join(args.out, "train.log"), "w")

    def log(s):
        print(s, flush=True)
        logf.write(s + "\n")
        logf.flush()

    log(f"args {json.dumps(vars(args))}")
    log(f"config {json.dumps(cfg.to_dict())}")
    log(f"params embedding {emb} ternary {tern} norm {norm} total {emb + tern + norm}")
    log(f"train tokens {train.numel()} val tokens {val.numel()} device {dev} torch {torch.__version__}")

    decay, no_decay = [], []
    for n, p in model.named_parameters():
        (decay if p.dim() >= 2 else no_decay).append(p)
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": args.wd},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=args.lr, betas=(0.9, 0.95), eps=1e-8)

    def lr_at(step):
        if step < args.warmup:
            return args.lr * (step + 1) / args.warmup
        p = (step - args.warmup) / max(1, args.steps - args.warmup)
        mn = args.lr * args.min_lr_frac
        return mn + 0.5 * (args.lr - mn) * (1 + math.cos(math.pi * p))

    gen = torch.Generator().manual_seed(args.seed)
    n = train.numel()
    best = float("inf")
    t0 = time.time()
    run_loss, run_n = 0.0, 0
    model.train()
    for step in range(args.steps + 1):
        stop = (args.time_limit > 0 and time.time() - t0 > args.time_limit) or \
            (args.stop_at > 0 and step >= args.stop_at)
        if stop:
            log(f"stopping at step {step}")
        if step % args.eval_every == 0 or step == args.steps or stop:
            vl = evaluate(model, val, args.ctx, dev)
            tl = run_loss / max(1, run_n)
            tag = ""
            if vl < best:
                best = vl
                tag = " *best"
                torch.save({"config": cfg.to_dict(), "model": model.state_dict(), "step": step,
                            "val_loss": vl, "args": vars(args)}, os.path.join(args.out, "best.pt"))
            log(f"step {step} lr {lr_at(step):.3e} train_loss {tl:.4f} val_loss {vl:.4f} "
                f"val_ppl {math.exp(vl):.3f} time {time.time() - t0:.1f}s{tag}")
            run_loss, run_n = 0.0, 0
            if step == args.steps or stop:
                break
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        ix = torch.randint(0, n - args.ctx - 1, (args.batch,), generator=gen)
        xb = torch.stack([train[i:i + args.ctx] for i in ix]).to(dev)
        yb = torch.stack([train[i + 1:i + 1 + args.ctx] for i in ix]).to(dev)
        logits = model(xb)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), yb.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        run_loss += float(loss)
        run_n += 1
    torch.save({"config": cfg.to_dict(), "model": model.state_dict(), "step": args.steps,
                "val_loss": vl, "args": vars(args)}, os.path.join(args.out, "last.pt"))
    # compact checkpoint of the best model: fp16 embedding + frozen (alpha, ternary) per BitLinear
    ck = torch.load(os.path.join(args.out, "best.pt"), map_location="cpu")
    m = BitNet(Config(**ck["config"]))
    m.load_state_dict(ck["model"])
    m.round_embedding_fp16()
    for _, b in bitlinears(m):
        b.freeze()
    save_compact(m, os.path.join(args.out, "best.npz"),
                 meta={"step": ck["step"], "val_loss_during_training": ck["val_loss"], "args": ck["args"],
                       "device": str(dev), "torch": torch.__version__})
    log(f"done best_val_loss {best:.4f} best_val_ppl {math.exp(best):.3f} time {time.time() - t0:.1f}s")


if __name__ == "__main__":
    main()
