#!/usr/bin/python3
"""Export a compact checkpoint (best.npz from train.py) to GGUF v3 in the official
BitNet b1.58 2B-4T layout (spec 3.3, 3.4), then read the file back and check that every
tensor equals what the eval-mode torch model uses.

Usage:
  /usr/bin/python3 scripts/train/export.py --ckpt build-train/final/best.npz \
      --tokenizer build-train/tokenizer.json --out models/tinystories-bitnet.gguf
"""
import argparse
import json
import os
import struct
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

# GGUF value types
U8, I8, U16, I16, U32, I32, F32, BOOL, STR, ARR, U64, I64, F64 = range(13)
# ggml tensor types
GGML_F32, GGML_F16, GGML_I2_S = 0, 1, 36
ALIGN = 32


def i2s_nbytes(n):
    return n // 4 + 32


def pack_i2s(t, alpha):
    """t: int array of {-1,0,1}, shape [ne1, ne0] (row-major, index o*ne0+k); alpha: float32."""
    q = (np.asarray(t).reshape(-1).astype(np.int16) + 1).astype(np.uint8)
    n = q.size
    assert n % 128 == 0
    q = q.reshape(-1, 4, 32)
    packed = (q[:, 0] << 6) | (q[:, 1] << 4) | (q[:, 2] << 2) | q[:, 3]
    return packed.astype(np.uint8).tobytes() + struct.pack("<f", np.float32(alpha)) + b"\0" * 28


def unpack_i2s(blob, n):
    p = np.frombuffer(blob, dtype=np.uint8, count=n // 4).reshape(-1, 32)
    q = np.stack([(p >> 6) & 3, (p >> 4) & 3, (p >> 2) & 3, p & 3], axis=1).reshape(-1)
    alpha = struct.unpack_from("<f", blob, n // 4)[0]
    return q.astype(np.int8) - 1, np.float32(alpha)


class GGUFWriter:
    def __init__(self):
        self.kv = []        # (key, type, value, elem_type)
        self.tensors = []   # (name, ne list, ggml type, bytes)

    def add(self, key, vtype, value, etype=None):
        self.kv.append((key, vtype, value, etype))

    def add_tensor(self, name, ne, gtype, data):
        self.tensors.append((name, list(ne), gtype, data))

    @staticmethod
    def _str(s):
        b = s.encode("utf-8")
        return struct.pack("<Q", len(b)) + b

    def _val(self, vtype, v):
        fmt = {U8: "<B", I8: "<b", U16: "<H", I16: "<h", U32: "<I", I32: "<i", F32: "<f",
               U64: "<Q", I64: "<q", F64: "<d"}
        if vtype in fmt:
            return struct.pack(fmt[vtype], v)
        if vtype == BOOL:
            return struct.pack("<B", 1 if v else 0)
        if vtype == STR:
            return self._str(v)
        raise ValueError(vtype)

    def write(self, path):
        out = bytearray()
        out += b"GGUF" + struct.pack("<IQQ", 3, len(self.tensors), len(self.kv))
        for key, vtype, value, etype in self.kv:
            out += self._str(key) + struct.pack("<I", vtype)
            if vtype == ARR:
                out += struct.pack("<IQ", etype, len(value))
                for v in value:
                    out += self._val(etype, v)
            else:
                out += self._val(vtype, value)
        off = 0
        offsets = []
        for name, ne, gtype, data in self.tensors:
            off = (off + ALIGN - 1) // ALIGN * ALIGN
            offsets.append(off)
            out += self._str(name) + struct.pack("<I", len(ne))
            for n in ne:
                out += struct.pack("<Q", n)
            out += struct.pack("<IQ", gtype, off)
            off += len(data)
        out += b"\0" * ((-len(out)) % ALIGN)
        base = len(out)
        for (name, ne, gtype, data), o in zip(self.tensors, offsets):
            out += b"\0" * (base + o - len(out))
            out += data
        with open(path, "wb") as f:
            f.write(out)
        return len(out)


def read_gguf(path):
    """Minimal GGUF v3 reader -> (kv dict, {name: (ne, type, numpy array | (t, alpha))})."""
    buf = open(path, "rb").read()
    pos = 0

    def rd(fmt):
        nonlocal pos
        v = struct.unpack_from(fmt, buf, pos)
        pos += struct.calcsize(fmt)
        return v[0] if len(v) == 1 else v

    def rstr():
        nonlocal pos
        n = rd("<Q")
        s = buf[pos:pos + n].decode("utf-8")
        pos += n
        return s

    fmts = {U8: "<B", I8: "<b", U16: "<H", I16: "<h", U32: "<I", I32: "<i", F32: "<f",
            U64: "<Q", I64: "<q", F64: "<d", BOOL: "<B"}

    def rval(t):
        if t == STR:
            return rstr()
        if t == ARR:
            et, n = rd("<IQ")
            return [rval(et) for _ in range(n)]
        v = rd(fmts[t])
        return bool(v) if t == BOOL else v

    assert buf[:4] == b"GGUF"
    pos = 4
    ver, nt, nkv = rd("<IQQ")
    assert ver == 3
    kv = {}
    types = {}
    for _ in range(nkv):
        k = rstr()
        t = rd("<I")
        kv[k] = rval(t)
        types[k] = t
    align = kv.get("general.alignment", ALIGN)
    infos = []
    for _ in range(nt):
        name = rstr()
        nd = rd("<I")
        ne = [rd("<Q") for _ in range(nd)]
        gt, off = rd("<IQ")
        infos.append((name, ne, gt, off))
    base = (pos + align - 1) // align * align
    tensors = {}
    for name, ne, gt, off in infos:
        assert off % align == 0
        n = int(np.prod(ne))
        p = base + off
        if gt == GGML_F32:
            a = np.frombuffer(buf, dtype="<f4", count=n, offset=p).reshape(ne[::-1])
        elif gt == GGML_F16:
            a = np.frombuffer(buf, dtype="<f2", count=n, offset=p).reshape(ne[::-1])
        elif gt == GGML_I2_S:
            t, alpha = unpack_i2s(buf[p:p + i2s_nbytes(n)], n)
            a = (t.reshape(ne[::-1]), alpha)
        else:
            raise ValueError(f"type {gt}")
        tensors[name] = (ne, gt, a)
    return kv, types, tensors


# HF-ish module name in model.py -> GGUF tensor suffix
BL_MAP = {"wq": "attn_q", "wk": "attn_k", "wv": "attn_v", "wo": "attn_output",
          "w_gate": "ffn_gate", "w_up": "ffn_up", "w_down": "ffn_down"}
NORM_MAP = {"attn_norm": "attn_norm", "attn_sub_norm": "attn_sub_norm", "ffn_norm": "ffn_norm",
            "ffn_sub_norm": "ffn_sub_norm"}


def export(model, tok, path, name, ctx_len=None):
    import torch  # noqa: F401
    from model import BitLinear, RMSNorm
    c = model.c
    w = GGUFWriter()
    A = "bitnet-b1.58"
    w.add("general.architecture", STR, A)
    w.add("general.name", STR, name)
    w.add(A + ".vocab_size", U32, c.n_vocab)
    w.add(A + ".context_length", U32, ctx_len or c.ctx)
    w.add(A + ".embedding_length", U32, c.d)
    w.add(A + ".block_count", U32, c.n_layer)
    w.add(A + ".feed_forward_length", U32, c.ffn)
    w.add(A + ".rope.dimension_count", U32, c.head_dim)
    w.add(A + ".attention.head_count", U32, c.n_head)
    w.add(A + ".attention.head_count_kv", U32, c.n_head_kv)
    w.add(A + ".attention.layer_norm_rms_epsilon", F32, c.eps)
    w.add(A + ".rope.freq_base", F32, c.rope_theta)
    w.add("general.file_type", U32, 40)
    w.add("tokenizer.ggml.model", STR, "gpt2")
    w.add("tokenizer.ggml.pre", STR, "llama-bpe")
    toks = tok["tokens"]
    assert len(toks) == c.n_vocab
    specials = {tok["bos_id"], tok["eos_id"]}
    w.add("tokenizer.ggml.tokens", ARR, toks, STR)
    w.add("tokenizer.ggml.token_type", ARR, [3 if i in specials else 1 for i in range(len(toks))], I32)
    w.add("tokenizer.ggml.merges", ARR, tok["merges"], STR)
    w.add("tokenizer.ggml.bos_token_id", U32, tok["bos_id"])
    w.add("tokenizer.ggml.eos_token_id", U32, tok["eos_id"])
    w.add("tokenizer.ggml.add_bos_token", BOOL, True)
    w.add("general.quantization_version", U32, 2)

    emb = model.embed.weight.detach().cpu().numpy()
    emb16 = emb.astype(np.float16)
    assert np.array_equal(emb16.astype(np.float32), emb), "embedding must already be fp16-rounded"
    w.add_tensor("token_embd.weight", [c.d, c.n_vocab], GGML_F16, emb16.astype("<f2").tobytes())
    w.add_tensor("output_norm.weight", [c.d], GGML_F32,
                 model.norm.weight.detach().cpu().numpy().astype("<f4").tobytes())
    for l, blk in enumerate(model.layers):
        p = f"blk.{l}."

        def norm(attr):
            m = getattr(blk, attr)
            assert isinstance(m, RMSNorm)
            a = m.weight.detach().cpu().numpy().astype("<f4")
            w.add_tensor(p + NORM_MAP[attr] + ".weight", [a.size], GGML_F32, a.tobytes())

        def bl(attr):
            m = getattr(blk, attr)
            assert isinstance(m, BitLinear)
            alpha, t = m.quantized()
            t = t.detach().cpu().numpy()
            assert t.shape == (m.out_f, m.in_f)
            w.add_tensor(p + BL_MAP[attr] + ".weight", [m.in_f, m.out_f], GGML_I2_S,
                         pack_i2s(t.astype(np.int8), np.float32(alpha.item())))

        norm("attn_norm")
        bl("wq"); bl("wk"); bl("wv"); bl("wo")
        norm("attn_sub_norm")
        norm("ffn_norm")
        bl("w_gate"); bl("w_up"); bl("w_down")
        norm("ffn_sub_norm")
    return w.write(path)


def model_from_gguf(path):
    """Build the eval-mode torch model from a GGUF written by export()."""
    import torch
    from model import BitNet, Config
    kv, _, T = read_gguf(path)
    A = kv["general.architecture"] + "."
    c = Config(n_vocab=kv[A + "vocab_size"], d=kv[A + "embedding_length"], n_layer=kv[A + "block_count"],
               n_head=kv[A + "attention.head_count"], n_head_kv=kv[A + "attention.head_count_kv"],
               ffn=kv[A + "feed_forward_length"], ctx=kv[A + "context_length"],
               rope_theta=kv[A + "rope.freq_base"], eps=kv[A + "attention.layer_norm_rms_epsilon"],
               dropout=0.0, bos_id=kv["tokenizer.ggml.bos_token_id"], eos_id=kv["tokenizer.ggml.eos_token_id"])
    assert kv[A + "rope.dimension_count"] == c.head_dim
    m = BitNet(c)
    with torch.no_grad():
        m.embed.weight.copy_(torch.from_numpy(T["token_embd.weight"][2].astype(np.float32)))
        m.norm.weight.copy_(torch.from_numpy(T["output_norm.weight"][2].copy()))
        inv_bl = {v: k for k, v in BL_MAP.items()}
        for l, blk in enumerate(m.layers):
            for k, v in NORM_MAP.items():
                getattr(blk, k).weight.copy_(torch.from_numpy(T[f"blk.{l}.{v}.weight"][2].copy()))
            for v, k in inv_bl.items():
                t, alpha = T[f"blk.{l}.{v}.weight"][2]
                mod = getattr(blk, k)
                tt = torch.from_numpy(t.astype(np.float32))
                a = torch.tensor(float(alpha), dtype=torch.float32)
                mod.frozen = (a, tt)
                mod.weight.copy_(tt * a)
    m.eval()
    return m, kv


def verify(model, path):
    """Re-read the file and check every tensor equals the eval-mode model's numbers exactly."""
    m2, kv = model_from_gguf(path)
    from model import bitlinears
    import torch
    assert torch.equal(model.embed.weight, m2.embed.weight)
    sd1, sd2 = model.state_dict(), m2.state_dict()
    for k in sd1:
        if "norm" in k:
            assert torch.equal(sd1[k], sd2[k]), k
    b2 = dict(bitlinears(m2))
    for n, b in bitlinears(model):
        a1, t1 = b.quantized()
        a2, t2 = b2[n].quantized()
        assert a1.dtype == torch.float32 and float(a1) == float(a2), n
        assert torch.equal(t1, t2), n
    x = torch.tensor([[model.c.bos_id] + list(range(100, 140))])
    with torch.no_grad():
        assert torch.equal(model(x), m2(x)), "logits differ after re-reading"
    return True


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ckpt", default="build-train/final/best.npz")
    ap.add_argument("--tokenizer", default="build-train/tokenizer.json")
    ap.add_argument("--out", default="models/tinystories-bitnet.gguf")
    ap.add_argument("--name", default="ternpipe TinyStories BitNet b1.58 (tiny)")
    ap.add_argument("--ctx", type=int, default=0, help="context_length to write (default: from the checkpoint)")
    args = ap.parse_args()
    from model import load_compact
    model, meta = load_compact(args.ckpt)
    tok = json.load(open(args.tokenizer, encoding="utf-8"))
    n = export(model, tok, args.out, args.name, args.ctx or None)
    print(f"wrote {args.out}: {n} bytes ({n / 2**20:.3f} MiB)")
    verify(model, args.out)
    print("verified: re-read tensors and logits equal the torch eval model exactly")


if __name__ == "__main__":
    main()
