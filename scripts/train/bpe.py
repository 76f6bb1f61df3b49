#!/usr/bin/python3
"""Byte-level BPE for the ternpipe TinyStories model (Llama-3 style).

Usage:
  /usr/bin/python3 scripts/train/bpe.py [--corpus PATH] [--out build-train] [--vocab 4096]

Writes:
  OUT/tokenizer.json  {"tokens": [...], "merges": ["l r", ...], "bos_id", "eos_id"}
  OUT/train.bin, OUT/val.bin   uint16 token streams (each story = BOS + ids + EOS)
  OUT/split.json      the byte offset of the train/validation split

Data split: the corpus is split at the first "<|endoftext|>" separator line at or after
95% of its bytes. Everything before it is training data (used for the BPE vocabulary and
for training); the rest (the last ~5%, whose final story is cut) is held out for validation.

Vocabulary: ids 0..255 are the 256 single bytes (in byte order, written in the GPT-2
byte-to-unicode alphabet), then one token per learned merge (in merge order; a merge whose
result string already exists adds no token), then <|begin_of_text|> (BOS) and
<|endoftext|> (EOS) as the last two ids.

Encoder (identical to the C engine, spec 4.2-4.4): pre-tokenize with the Llama-3 regex,
map bytes to the GPT-2 alphabet; if the whole pre-token is a vocab entry emit it
(ignore_merges); else start from single characters and repeatedly merge the adjacent pair
with the lowest merge rank, leftmost on ties.
"""
import argparse
import heapq
import json
import os
import sys

import numpy as np
import regex

LLAMA3_PAT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|"
              r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
PAT = regex.compile(LLAMA3_PAT)

BOS_TEXT = "<|begin_of_text|>"
EOS_TEXT = "<|endoftext|>"
SEP_LINE = b"<|endoftext|>"
DEFAULT_CORPUS = "/work/shared/fixtures/corpus/tinystories-2MiB.txt"


def bytes_to_unicode():
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAC + 1)) + list(range(0xAE, 0xFF + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs)}


BYTE_ENC = bytes_to_unicode()
BYTE_DEC = {c: b for b, c in BYTE_ENC.items()}


def map_bytes(s):
    return "".join(BYTE_ENC[b] for b in s.encode("utf-8"))


def split_corpus(raw):
    """raw: corpus bytes -> (train_bytes, val_bytes, split_offset)."""
    target = int(len(raw) * 0.95)
    # first separator line at or after the 95% point
    i = raw.find(b"\n" + SEP_LINE + b"\n", target - 1)
    if i < 0:
        i = target
    else:
        i += 1  # split at the start of the separator line
    return raw[:i], raw[i:], i


def stories(text):
    """Split text into stories at <|endoftext|> lines; strip surrounding whitespace."""
    out = []
    for part in text.split(EOS_TEXT):
        p = part.strip()
        if p:
            out.append(p)
    return out


def train_bpe(train_stories, n_merge_tokens):
    freq = {}
    for st in train_stories:
        for m in PAT.findall(st):
            k = map_bytes(m)
            freq[k] = freq.get(k, 0) + 1
    words = [list(w) for w in sorted(freq)]
    counts = [freq["".join(w)] for w in words]
    pair_cnt = {}
    pair_words = {}
    for wi, w in enumerate(words):
        c = counts[wi]
        for a, b in zip(w, w[1:]):
            pair_cnt[(a, b)] = pair_cnt.get((a, b), 0) + c
            pair_words.setdefault((a, b), set()).add(wi)
    heap = [(-c, p) for p, c in pair_cnt.items()]
    heapq.heapify(heap)
    vocab = set(BYTE_ENC.values())
    merges = []
    new_tokens = []
    while len(new_tokens) < n_merge_tokens and heap:
        negc, pair = heapq.heappop(heap)
        if pair_cnt.get(pair, 0) != -negc or negc == 0:
            continue  # stale entry
        a, b = pair
        ab = a + b
        merges.append(pair)
        if ab not in vocab:
            vocab.add(ab)
            new_tokens.append(ab)
        changed = {}
        for wi in sorted(pair_words.pop(pair, ())):
            w = words[wi]
            c = counts[wi]
            # remove old pairs of this word
            for x, y in zip(w, w[1:]):
                pair_cnt[(x, y)] -= c
                changed[(x, y)] = True
            nw = []
            i = 0
            while i < len(w):
                if i + 1 < len(w) and w[i] == a and w[i + 1] == b:
                    nw.append(ab)
                    i += 2
                else:
                    nw.append(w[i])
                    i += 1
            words[wi] = nw
            for x, y in zip(nw, nw[1:]):
                pair_cnt[(x, y)] = pair_cnt.get((x, y), 0) + c
                pair_words.setdefault((x, y), set()).add(wi)
                changed[(x, y)] = True
        pair_cnt.pop(pair, None)
        for p in changed:
            if p == pair:
                continue
            c = pair_cnt.get(p, 0)
            if c > 0:
                heapq.heappush(heap, (-c, p))
            else:
                pair_cnt.pop(p, None)
    return merges, new_tokens


class Tokenizer:
    def __init__(self, tokens, merges, bos_id, eos_id):
        self.tokens = tokens
        self.tok2id = {}
        for i, t in enumerate(tokens):
            self.tok2id.setdefault(t, i)
        self.ranks = {}
        for r, m in enumerate(merges):
            a, b = m.split(" ")
            self.ranks.setdefault((a, b), r)
        self.bos_id = bos_id
        self.eos_id = eos_id
        self.cache = {}

    @classmethod
    def load(cls, path):
        with open(path, encoding="utf-8") as f:
            j = json.load(f)
        return cls(j["tokens"], j["merges"], j["bos_id"], j["eos_id"])

    def bpe(self, piece):
        """piece: mapped pre-token string -> list of ids."""
        r = self.cache.get(piece)
        if r is not None:
            return r
        if piece in self.tok2id:  # ignore_merges
            r = [self.tok2id[piece]]
        else:
            syms = list(piece)
            ranks = self.ranks
            while len(syms) > 1:
                best = None
                bi = -1
                for i in range(len(syms) - 1):
                    rk = ranks.get((syms[i], syms[i + 1]))
                    if rk is not None and (best is None or rk < best):
                        best = rk
                        bi = i
                if best is None:
                    break
                syms[bi:bi + 2] = [syms[bi] + syms[bi + 1]]
            r = []
            for s in syms:
                if s in self.tok2id:
                    r.append(self.tok2id[s])
                else:  # byte fallback (cannot happen: every merge result is a token)
                    r.extend(self.tok2id[c] for c in s)
        self.cache[piece] = r
        return r

    def encode(self, text, bos=False, eos=False):
        ids = [self.bos_id] if bos else []
        for m in PAT.findall(text):
            ids.extend(self.bpe(map_bytes(m)))
        if eos:
            ids.append(self.eos_id)
        return ids

    def decode(self, ids):
        out = bytearray()
        for i in ids:
            t = self.tokens[i]
            if i in (self.bos_id, self.eos_id):
                out += t.encode("utf-8")
            else:
                out += bytes(BYTE_DEC[c] for c in t)
        return out.decode("utf-8", errors="replace")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--corpus", default=DEFAULT_CORPUS)
    ap.add_argument("--out", default="build-train")
    ap.add_argument("--vocab", type=int, default=4096)
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    raw = open(args.corpus, "rb").read()
    tr_b, va_b, off = split_corpus(raw)
    tr_st = stories(tr_b.decode("utf-8"))
    va_st = stories(va_b.decode("utf-8", errors="replace"))
    n_merge_tokens = args.vocab - 256 - 2
    merges, new_tokens = train_bpe(tr_st, n_merge_tokens)
    tokens = [BYTE_ENC[b] for b in range(256)] + new_tokens + [BOS_TEXT, EOS_TEXT]
    assert len(tokens) == args.vocab
    merges_s = [a + " " + b for a, b in merges]
    tok = {"tokens": tokens, "merges": merges_s, "bos_id": args.vocab - 2, "eos_id": args.vocab - 1,
           "pre_tokenizer": LLAMA3_PAT}
    with open(os.path.join(args.out, "tokenizer.json"), "w", encoding="utf-8") as f:
        json.dump(tok, f, ensure_ascii=False)
    T = Tokenizer(tokens, merges_s, tok["bos_id"], tok["eos_id"])
    for name, sts in (("train", tr_st), ("val", va_st)):
        ids = []
        for st in sts:
            ids.extend(T.encode(st, bos=True, eos=True))
        arr = np.array(ids, dtype=np.uint16)
        arr.tofile(os.path.join(args.out, name + ".bin"))
        print(f"{name}: {len(sts)} stories, {len(arr)} tokens, {len(arr) and (off if name == 'train' else len(raw) - off) / len(arr):.2f} bytes/token")
    with open(os.path.join(args.out, "split.json"), "w") as f:
        json.dump({"corpus": args.corpus, "corpus_bytes": len(raw), "split_offset": off,
                   "train_stories": len(tr_st), "val_stories": len(va_st)}, f)
    print(f"{len(merges)} merges, {len(tokens)} tokens, split at byte {off} of {len(raw)}")
    print("sample:", T.encode("Once upon a time, there was a little girl named Lily."))


if __name__ == "__main__":
    sys.exit(main())
