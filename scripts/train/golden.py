#!/usr/bin/python3
"""Golden outputs for the C engine, computed by the torch eval model loaded from the GGUF.

Usage:
  /usr/bin/python3 scripts/train/golden.py --model models/tinystories-bitnet.gguf \
      --out tests/golden/tinystories-golden.bin [--val-loss] [--samples]

The prompts are the first L tokens (BOS included; L = 64, 72, 80, 96, 112) of five stories
from the held-out validation part of the corpus (see bpe.py for the split), tokenized by the
Python encoder built from the GGUF's own vocab and merges. Format: tests/golden/README.md.
"""
import argparse
import hashlib
import math
import os
import struct
import sys

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bpe import DEFAULT_CORPUS, Tokenizer, split_corpus, stories  # noqa: E402
from export import model_from_gguf  # noqa: E402
import model as model_mod  # noqa: E402
from model import bitlinears  # noqa: E402

PROMPT_LENS = [64, 72, 80, 96, 112]
N_GEN = 64


@torch.no_grad()
def greedy_with_margin(model, ids, n_new):
    ids = list(ids)
    out, margins = [], []
    for _ in range(n_new):
        logits = model(torch.tensor([ids]))[0, -1]
        top = torch.topk(logits, 2)
        nxt = int(torch.argmax(logits))  # first (lowest) id among equal maxima
        out.append(nxt)
        margins.append(float(top.values[0] - top.values[1]))
        ids.append(nxt)
    return out, margins


@torch.no_grad()
def val_loss(model, val_ids, ctx=256):
    """Same measure as train.py's evaluate (non-overlapping windows of ctx+1, stride ctx)."""
    tot, cnt = 0.0, 0
    n = len(val_ids)
    v = torch.tensor(val_ids)
    for s in range(0, n - 1, ctx):
        w = v[s:s + ctx + 1]
        logits = model(w[None, :-1])[0]
        tot += float(F.cross_entropy(logits.double(), w[1:], reduction="sum"))
        cnt += w.numel() - 1
    return tot / cnt, cnt


def to_double(model):
    """fp64 arithmetic for everything that is not specified as a rounding step: the stored
    fp16 embedding, F32 norms and (alpha, ternary) pairs convert exactly, and the int8
    quantizer still rounds x*s to integers, so only the float summation error goes away."""
    model.double()
    for _, b in bitlinears(model):
        a, t = b.quantized()
        b.frozen = (a.double(), t.double())


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="models/tinystories-bitnet.gguf")
    ap.add_argument("--corpus", default=DEFAULT_CORPUS)
    ap.add_argument("--out", default="tests/golden/tinystories-golden.bin")
    ap.add_argument("--val-loss", action="store_true", help="also report the held-out loss of the file's model")
    ap.add_argument("--samples", action="store_true", help="also print greedy samples")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--arith", choices=["engine", "fp64", "fp32"], default="engine",
                    help="engine: fp32 in the C engine's specified order and rounding (model.py: ARITH), "
                         "the reference the tests hold the engine to; fp64: exact arithmetic; fp32: plain torch")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    model, kv = model_from_gguf(args.model)
    if args.arith == "fp64":
        to_double(model)
    model_mod.ARITH = "engine" if args.arith == "engine" else "torch"
    c = model.c
    tok = Tokenizer(kv["tokenizer.ggml.tokens"], kv["tokenizer.ggml.merges"],
                    kv["tokenizer.ggml.bos_token_id"], kv["tokenizer.ggml.eos_token_id"])
    raw = open(args.corpus, "rb").read()
    _, va_b, _ = split_corpus(raw)
    va_st = stories(va_b.decode("utf-8", errors="replace"))
    sha = hashlib.sha256(open(args.model, "rb").read()).digest()

    prompts = []
    si = 0
    for L in PROMPT_LENS:
        while True:
            ids = tok.encode(va_st[si], bos=True)
            si += 1
            if len(ids) >= L:
                prompts.append(ids[:L])
                break

    blob = bytearray()
    blob += b"TPGOLDEN" + struct.pack("<IIIIIII", 1, c.n_vocab, len(prompts), 5, N_GEN, c.bos_id, c.eos_id)
    blob += sha
    for p in prompts:
        L = len(p)
        pos = [0, 15, 31, 47, L - 1]
        with torch.no_grad():
            logits = model(torch.tensor([p]))[0]
        gen, margins = greedy_with_margin(model, p, N_GEN)
        blob += struct.pack("<I", L) + struct.pack(f"<{L}I", *p)
        blob += struct.pack("<5I", *pos)
        for q in pos:
            blob += logits[q].float().numpy().astype("<f4").tobytes()
        blob += struct.pack(f"<{N_GEN}I", *gen)
        blob += struct.pack(f"<{N_GEN}f", *margins)
        rng = float(logits[pos].max() - logits[pos].min())
        print(f"prompt L={L}: logit range {rng:.3f}, min greedy margin {min(margins):.4f}")
        print("   prompt:", repr(tok.decode(p[1:])[-80:]))
        print("   greedy:", repr(tok.decode(gen)))
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "wb") as f:
        f.write(blob)
    print(f"wrote {args.out}: {len(blob)} bytes, model sha256 {sha.hex()}")

    if args.val_loss:
        va_ids = []
        for st in va_st:
            va_ids += tok.encode(st, bos=True, eos=True)
        vl, n = val_loss(model, va_ids)
        print(f"held-out: {n} predicted tokens, loss {vl:.4f} nats/token, perplexity {math.exp(vl):.3f}")
    if args.samples:
        for prompt in ["Once upon a time", "One day, a little girl named Lily", "Tom and his dog"]:
            ids = tok.encode(prompt, bos=True)
            gen, _ = greedy_with_margin(model, ids, 120)
            if c.eos_id in gen:
                gen = gen[:gen.index(c.eos_id)]
            print(f"--- greedy from {prompt!r} (stopped at EOS, max 120 tokens):")
            print(prompt + tok.decode(gen))


if __name__ == "__main__":
    main()
