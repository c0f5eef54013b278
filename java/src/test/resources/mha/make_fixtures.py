#!/usr/bin/python3
"""Fixtures for the qkv multi-head attention layer, computed by PyTorch's torch.nn.MultiheadAttention.

Run from this directory with Debian's python3-torch (1.13) and python3-numpy:
    /usr/bin/python3 make_fixtures.py
It writes, for each case, the layer weights as .safetensors (written by hand below: no safetensors package)
and the inputs and expected output as .npy (numpy.save). Expected outputs are computed in float64 from the
float32 weights and inputs, then stored as float32.

Cases:
  self    E=16 H=4, B=2 L=5, biases, no mask; nn.MultiheadAttention names (in_proj_weight, out_proj.*)
  causal  E=16 H=2, B=1 L=7, attn_mask = triu(ones, 1).bool() (torch: True = may NOT attend), weights
          rounded to bfloat16 and stored as BF16 so the reader's conversion is checked exactly
  cross   E=24 H=3, B=2 L=4 Lkv=6, key_padding_mask (torch: True = padding), weights stored under the
          Hugging Face names with prefix "decoder.cross_attn." (q_proj/k_proj/v_proj/out_proj .weight/.bias)
The mask files use qkv's convention: bool, True = may attend, shape [B, 1, 1, Lkv] (or [L, L]).
"""
import json
import struct

import numpy as np
import torch


def save_safetensors(path, tensors, dtype="F32"):
    """tensors: ordered dict name -> torch tensor (float32, or bfloat16 when dtype == 'BF16')."""
    header = {"__metadata__": {"format": "pt", "source": "make_fixtures.py"}}
    blobs = []
    offset = 0
    for name, t in tensors.items():
        t = t.detach().contiguous()
        if dtype == "F32":
            raw = t.float().numpy().astype("<f4").tobytes()
        elif dtype == "BF16":
            raw = t.bfloat16().view(torch.int16).numpy().astype("<i2").tobytes()
        else:
            raise ValueError(dtype)
        header[name] = {"dtype": dtype, "shape": list(t.shape), "data_offsets": [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 8)  # the reference writer pads the header to 8 bytes
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for b in blobs:
            f.write(b)


def expected(mha, x, kv, **kw):
    m = mha.double().eval()
    with torch.no_grad():
        y, _ = m(x.double(), kv.double(), kv.double(), need_weights=False, **kw)
    mha.float()
    return y.float().numpy()


def self_case():
    torch.manual_seed(1)
    e, h, b, l = 16, 4, 2, 5
    mha = torch.nn.MultiheadAttention(e, h, bias=True, batch_first=True)
    with torch.no_grad():  # non-zero biases, which PyTorch initializes to zero
        mha.in_proj_bias.uniform_(-0.5, 0.5)
        mha.out_proj.bias.uniform_(-0.5, 0.5)
    x = torch.randn(b, l, e)
    save_safetensors("self.safetensors", {
        "in_proj_weight": mha.in_proj_weight, "in_proj_bias": mha.in_proj_bias,
        "out_proj.weight": mha.out_proj.weight, "out_proj.bias": mha.out_proj.bias})
    np.save("self_x.npy", x.numpy())
    np.save("self_out.npy", expected(mha, x, x))


def causal_case():
    torch.manual_seed(2)
    e, h, b, l = 16, 2, 1, 7
    mha = torch.nn.MultiheadAttention(e, h, bias=True, batch_first=True)
    with torch.no_grad():
        mha.in_proj_bias.uniform_(-0.5, 0.5)
        mha.out_proj.bias.uniform_(-0.5, 0.5)
        for p in mha.parameters():  # make the weights exactly representable in bfloat16
            p.copy_(p.bfloat16().float())
    x = torch.randn(b, l, e)
    not_allowed = torch.triu(torch.ones(l, l), 1).bool()
    save_safetensors("causal.safetensors", {
        "in_proj_weight": mha.in_proj_weight, "in_proj_bias": mha.in_proj_bias,
        "out_proj.weight": mha.out_proj.weight, "out_proj.bias": mha.out_proj.bias}, dtype="BF16")
    np.save("causal_x.npy", x.numpy())
    np.save("causal_mask.npy", (~not_allowed).numpy())
    np.save("causal_out.npy", expected(mha, x, x, attn_mask=not_allowed))


def cross_case():
    torch.manual_seed(3)
    e, h, b, l, lkv = 24, 3, 2, 4, 6
    mha = torch.nn.MultiheadAttention(e, h, bias=True, batch_first=True)
    with torch.no_grad():
        mha.in_proj_bias.uniform_(-0.5, 0.5)
        mha.out_proj.bias.uniform_(-0.5, 0.5)
    x = torch.randn(b, l, e)
    kv = torch.randn(b, lkv, e)
    padding = torch.zeros(b, lkv, dtype=torch.bool)
    padding[1, 4:] = True  # the second sequence has only 4 real keys
    wq, wk, wv = mha.in_proj_weight.chunk(3)
    bq, bk, bv = mha.in_proj_bias.chunk(3)
    p = "decoder.cross_attn."
    save_safetensors("cross.safetensors", {
        p + "q_proj.weight": wq, p + "q_proj.bias": bq, p + "k_proj.weight": wk, p + "k_proj.bias": bk,
        p + "v_proj.weight": wv, p + "v_proj.bias": bv,
        p + "out_proj.weight": mha.out_proj.weight, p + "out_proj.bias": mha.out_proj.bias,
        "decoder.other.weight": torch.randn(3, 3)})
    np.save("cross_x.npy", x.numpy())
    np.save("cross_kv.npy", kv.numpy())
    np.save("cross_mask.npy", (~padding).reshape(b, 1, 1, lkv).numpy())
    np.save("cross_out.npy", expected(mha, x, kv, key_padding_mask=padding))


if __name__ == "__main__":
    print("torch", torch.__version__, "numpy", np.__version__)
    self_case()
    causal_case()
    cross_case()
