"""Is a forward over several rows bit-identical, row by row, to one-row forwards? (#17)

    python scripts/row_invariance.py            # the auto dtype (bf16 where native) and fp32

For each dtype it prints, over the default model's matmul weights, the distinct values of the
largest m (<= 16) such that `linear` over 1..m rows gives every row the bits it gets alone, and
how many attention rows of a multi-query SDPA call (the verification shape: n drafts after a
cached prefix, causal mask) differ from the one-query call `ar` makes. If either is not
invariant, a lossless method verifying several rows at once can only be token-exact where the
rounding differences never flip an argmax: likely in fp32, often not in bf16.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

import tokenleap
from tokenleap.models.kernels import linear


@torch.no_grad()
def invariant_rows(weight, most: int = 16) -> int:
    x = torch.randn(most, weight.shape[1], generator=torch.Generator().manual_seed(0)).to(weight.dtype)
    alone = torch.cat([linear(x[i:i + 1], weight) for i in range(most)])
    for m in range(2, most + 1):
        if not torch.equal(linear(x[:m], weight), alone[:m]):
            return m - 1
    return most


@torch.no_grad()
def attention_rows_differing(dtype: torch.dtype, heads: int = 9, kv_heads: int = 3, dim: int = 64) -> tuple[int, int]:
    gen, bad, total = torch.Generator().manual_seed(0), 0, 0
    for start in (37, 100, 250):
        for n in (2, 5, 8):
            t = start + n
            q = torch.randn(1, heads, n, dim, generator=gen).to(dtype)
            k, v = (torch.randn(1, kv_heads, t, dim, generator=gen).to(dtype) for _ in range(2))
            mask = torch.zeros(n, t, dtype=dtype)
            mask[:, start:].masked_fill_(~torch.ones(n, n, dtype=torch.bool).tril(), float("-inf"))
            multi = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)
            for i in range(n):
                one = F.scaled_dot_product_attention(q[:, :, i:i + 1], k[:, :, :start + i + 1], v[:, :, :start + i + 1],
                                                     enable_gqa=True)
                total += 1
                bad += not torch.equal(one, multi[:, :, i:i + 1])
    return bad, total


def main() -> None:
    torch.set_num_threads(2)
    for dtype in ("auto", "fp32"):
        model = tokenleap.load_model(tokenleap.DEFAULT_MODEL, dtype=dtype)
        runner = model.runner
        limits = [invariant_rows(w) for w in runner.matrices()]
        bad, total = attention_rows_differing(runner.dtype)
        print(f"{dtype} -> {runner.dtype} ({runner.layout}): rows a matmul may take and stay bit-exact, "
              f"over {len(limits)} weights: min {min(limits)}, distinct {sorted(set(limits))}; "
              f"attention rows differing from one-query calls: {bad}/{total}")


if __name__ == "__main__":
    main()
