"""BitNet b1.58 2B-4T architecture, small (spec 2.1-2.7), in PyTorch.

Training mode: BitLinear uses straight-through estimators (fake quantization).
Eval mode: BitLinear computes exactly what the C engine computes (fp32, same op order):
  amax = max|x| (per token, clamped >= 1e-5); s = 127/amax; q = clamp(round_half_even(x*s), -128, 127)
  alpha = mean|W| (clamped >= 1e-5);  t = clamp(round(W/alpha), -1, 1)
  y = (q @ t^T) / s * alpha        (the integer dot is exact in fp32)
"""
import math
from dataclasses import dataclass, asdict

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass
class Config:
    n_vocab: int = 4096
    d: int = 384
    n_layer: int = 10
    n_head: int = 6
    n_head_kv: int = 2
    ffn: int = 1024
    ctx: int = 512          # context_length written to the GGUF
    rope_theta: float = 10000.0
    eps: float = 1e-5
    dropout: float = 0.0
    bos_id: int = 4094
    eos_id: int = 4095

    @property
    def head_dim(self):
        return self.d // self.n_head

    def to_dict(self):
        return asdict(self)


def rmsnorm(x, w, eps):
    if ARITH == "engine" and not torch.is_grad_enabled():
        return _engine_rmsnorm(x, w, eps)
    scale = 1.0 / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + eps)
    return (x * scale) * w


class RMSNorm(nn.Module):
    def __init__(self, n, eps):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(n))
        self.eps = eps

    def forward(self, x):
        return rmsnorm(x, self.weight, self.eps)


def weight_quant(W):
    """-> (alpha scalar fp32 tensor, ternary fp32 tensor)"""
    alpha = W.abs().mean().clamp(min=1e-5)
    t = (W / alpha).round().clamp(-1, 1)
    return alpha, t


def act_quant(x, exact=False):
    """exact: s = 127 / amax as one IEEE division (spec 2.3, what the engine computes).
    Otherwise torch's scalar / tensor, which is 127 * (1 / amax), two roundings: training
    used that, so it stays for training to keep runs repeatable."""
    amax = x.abs().amax(-1, keepdim=True).clamp(min=1e-5)
    s = torch.full_like(amax, 127.0) / amax if exact else 127.0 / amax
    q = (x * s).round().clamp(-128, 127)
    return s, q


# Eval arithmetic. "torch": plain torch ops in the model's dtype. "engine": the C engine's
# specified order and rounding (include/ternpipe/kernels.h; the scalar reference variant), so
# that the int8 quantizer sees bit-identical inputs and the comparison measures the engine,
# not float noise: RMSNorm sums squares in double and rounds the mean to fp32; attention
# scores are double dot products rounded to fp32, softmax exponentials are rounded from
# double, sums in double, and the weighted sum of V runs position by position in fp32 without
# fused multiply-add; the LM head is a double dot product rounded to fp32. Everything else
# (quantizer, BitLinear epilogue, RoPE, relu^2, residual adds) is the same fp32 op either way.
ARITH = "torch"


def _engine_rmsnorm(x, w, eps):
    mean = ((x.double() ** 2).sum(-1, keepdim=True) / x.shape[-1]).float()
    scale = 1.0 / torch.sqrt(mean + eps)
    return (x * scale) * w


def _engine_attention(q, k, v, mask):
    # q, k, v: [B, H, T, hd] fp32
    hd = q.shape[-1]
    scale = torch.tensor(1.0, dtype=torch.float32) / torch.sqrt(torch.tensor(float(hd), dtype=torch.float32))
    att = (q.double() @ k.double().transpose(-1, -2)).float() * scale
    att = att.masked_fill(mask, float("-inf"))
    m = att.amax(-1, keepdim=True)
    e = torch.exp((att - m).double()).float()
    e = torch.where(e >= torch.finfo(torch.float32).tiny, e, torch.zeros_like(e))  # no subnormals
    inv = (1.0 / e.double().sum(-1, keepdim=True)).float()
    p = e * inv
    p = torch.where(p >= torch.finfo(torch.float32).tiny, p, torch.zeros_like(p))
    out = torch.zeros_like(q)
    for j in range(k.shape[2]):
        out = out + p[..., j:j + 1] * v[:, :, j:j + 1, :]
    return out


class BitLinear(nn.Module):
    def __init__(self, in_f, out_f):
        super().__init__()
        assert in_f % 128 == 0, "BitLinear input width must be a multiple of 128"
        self.in_f, self.out_f = in_f, out_f
        self.weight = nn.Parameter(torch.empty(out_f, in_f))
        nn.init.normal_(self.weight, std=0.02)
        self.frozen = None  # (alpha, t): fixed quantization, used by eval when set

    def quantized(self):
        """(alpha, t) used in eval mode: the frozen pair if set, else computed from the master."""
        if self.frozen is not None:
            return self.frozen
        return weight_quant(self.weight.detach())

    def freeze(self):
        a, t = weight_quant(self.weight.detach())
        self.frozen = (a.detach().cpu().clone(), t.detach().cpu().clone())

    def forward(self, x):
        W = self.weight
        if self.training:
            alpha, t = weight_quant(W)
            wq = W + (t * alpha - W).detach()
            s, q = act_quant(x)
            xq = x + (q / s - x).detach()
            return F.linear(xq, wq)
        alpha, t = self.quantized()
        alpha, t = alpha.to(x.device), t.to(x.device)
        s, q = act_quant(x, exact=True)
        return (F.linear(q, t) / s) * alpha


def rope_tables(T, head_dim, theta, device):
    """cos/sin [T, head_dim] for NEOX rotate_half; computed in float64, rounded to fp32."""
    half = head_dim // 2
    j = torch.arange(half, dtype=torch.float64)
    inv = theta ** (-2.0 * j / head_dim)
    p = torch.arange(T, dtype=torch.float64)
    ang = p[:, None] * inv[None, :]
    ang = torch.cat([ang, ang], dim=-1)
    return ang.cos().float().to(device), ang.sin().float().to(device)


def apply_rope(x, cos, sin):
    # x: [B, H, T, hd]; pairs j and j + hd/2
    h = x.shape[-1] // 2
    x1, x2 = x[..., :h], x[..., h:]
    rot = torch.cat([-x2, x1], dim=-1)
    return x * cos + rot * sin


class Block(nn.Module):
    def __init__(self, c: Config):
        super().__init__()
        self.c = c
        kv = c.n_head_kv * c.head_dim
        self.attn_norm = RMSNorm(c.d, c.eps)
        self.wq = BitLinear(c.d, c.d)
        self.wk = BitLinear(c.d, kv)
        self.wv = BitLinear(c.d, kv)
        self.attn_sub_norm = RMSNorm(c.d, c.eps)
        self.wo = BitLinear(c.d, c.d)
        self.ffn_norm = RMSNorm(c.d, c.eps)
        self.w_gate = BitLinear(c.d, c.ffn)
        self.w_up = BitLinear(c.d, c.ffn)
        self.ffn_sub_norm = RMSNorm(c.ffn, c.eps)
        self.w_down = BitLinear(c.ffn, c.d)
        self.drop = nn.Dropout(c.dropout)

    def forward(self, x, cos, sin, mask):
        c = self.c
        B, T, _ = x.shape
        hd = c.head_dim
        h = self.attn_norm(x)
        q = self.wq(h).view(B, T, c.n_head, hd).transpose(1, 2)
        k = self.wk(h).view(B, T, c.n_head_kv, hd).transpose(1, 2)
        v = self.wv(h).view(B, T, c.n_head_kv, hd).transpose(1, 2)
        q = apply_rope(q, cos, sin)
        k = apply_rope(k, cos, sin)
        g = c.n_head // c.n_head_kv
        # query head i uses kv head i // g
        k = k[:, :, None].expand(B, c.n_head_kv, g, T, hd).reshape(B, c.n_head, T, hd)
        v = v[:, :, None].expand(B, c.n_head_kv, g, T, hd).reshape(B, c.n_head, T, hd)
        if ARITH == "engine" and not self.training:
            a = _engine_attention(q, k, v, mask).transpose(1, 2).reshape(B, T, c.d)
        else:
            att = (q @ k.transpose(-1, -2)) * (1.0 / math.sqrt(hd))
            att = att.masked_fill(mask, float("-inf"))
            att = torch.softmax(att, dim=-1)
            att = self.drop(att)
            a = (att @ v).transpose(1, 2).reshape(B, T, c.d)
        a = self.attn_sub_norm(a)
        x = x + self.drop(self.wo(a))
        h = self.ffn_norm(x)
        m = torch.relu(self.w_gate(h)).pow(2) * self.w_up(h)
        m = self.ffn_sub_norm(m)
        x = x + self.drop(self.w_down(m))
        return x


class BitNet(nn.Module):
    def __init__(self, c: Config):
        super().__init__()
        self.c = c
        self.embed = nn.Embedding(c.n_vocab, c.d)
        nn.init.normal_(self.embed.weight, std=0.02)
        self.layers = nn.ModuleList([Block(c) for _ in range(c.n_layer)])
        self.norm = RMSNorm(c.d, c.eps)
        self.drop = nn.Dropout(c.dropout)

    def forward(self, ids):
        B, T = ids.shape
        cos, sin = rope_tables(T, self.c.head_dim, self.c.rope_theta, ids.device)
        mask = torch.ones(T, T, dtype=torch.bool, device=ids.device).triu(1)
        x = self.drop(self.embed(ids))
        for l in self.layers:
            x = l(x, cos, sin, mask)
        x = self.norm(x)
        if ARITH == "engine" and not self.training:
            return F.linear(x.double(), self.embed.weight.double()).float()
        return F.linear(x, self.embed.weight)  # tied LM head, full precision

    def round_embedding_fp16(self):
        with torch.no_grad():
            self.embed.weight.copy_(self.embed.weight.half().float())

    def param_counts(self):
        emb = self.embed.weight.numel()
        tern = sum(m.weight.numel() for m in self.modules() if isinstance(m, BitLinear))
        norm = sum(m.weight.numel() for m in self.modules() if isinstance(m, RMSNorm))
        return emb, tern, norm


@torch.no_grad()
def greedy(model, ids, n_new):
    """Greedy decoding (argmax; torch.argmax returns the lowest id on ties). Full recompute."""
    model.eval()
    ids = list(ids)
    out = []
    for _ in range(n_new):
        x = torch.tensor([ids], dtype=torch.long)
        logits = model(x)[0, -1]
        nxt = int(torch.argmax(logits))
        out.append(nxt)
        ids.append(nxt)
    return out


# ---- compact checkpoint (.npz): exactly the numbers the GGUF holds ------------------------
# config (json), meta (json), embed_f16 [V,d] float16, norm:<name> float32,
# alpha:<name> float32 scalar, codes:<name> uint8 packed 4 per byte (code = t+1; element 4i+j in
# bits 2j..2j+1 of byte i), elements flattened row-major [out, in].

def bitlinears(model):
    return [(n, m) for n, m in model.named_modules() if isinstance(m, BitLinear)]


def save_compact(model, path, meta=None):
    import json
    import numpy as np
    d = {"config": np.array(json.dumps(model.c.to_dict())), "meta": np.array(json.dumps(meta or {}))}
    d["embed_f16"] = model.embed.weight.detach().cpu().half().numpy()
    for n, m in model.named_modules():
        if isinstance(m, RMSNorm):
            d["norm:" + n] = m.weight.detach().cpu().float().numpy()
    for n, m in bitlinears(model):
        a, t = m.quantized()
        codes = (t.detach().cpu().reshape(-1) + 1).to(torch.uint8).numpy().reshape(-1, 4)
        d["alpha:" + n] = np.array(float(a), dtype=np.float32) if a.dtype != torch.float32 else a.detach().cpu().reshape(()).numpy()
        d["codes:" + n] = codes[:, 0] | (codes[:, 1] << 2) | (codes[:, 2] << 4) | (codes[:, 3] << 6)
    with open(path, "wb") as f:
        np.savez(f, **d)


def load_compact(path):
    import json
    import numpy as np
    z = np.load(path)
    c = Config(**json.loads(str(z["config"])))
    c.dropout = 0.0
    model = BitNet(c)
    mods = dict(model.named_modules())
    with torch.no_grad():
        model.embed.weight.copy_(torch.from_numpy(z["embed_f16"].astype(np.float32)))
        for k in z.files:
            if k.startswith("norm:"):
                mods[k[5:]].weight.copy_(torch.from_numpy(z[k]))
            elif k.startswith("codes:"):
                n = k[6:]
                m = mods[n]
                p = z[k]
                codes = np.stack([(p >> (2 * j)) & 3 for j in range(4)], axis=1).reshape(-1)
                t = torch.from_numpy(codes.astype(np.float32) - 1.0).reshape(m.out_f, m.in_f)
                a = torch.from_numpy(np.array(z["alpha:" + n], dtype=np.float32)).reshape(())
                m.frozen = (a, t)
                m.weight.copy_(t * a)
    model.eval()
    return model, json.loads(str(z["meta"]))
