"""Hashes of every method's outputs, greedy and sampling, on the real default model in fp32.

    python scripts/output_hashes.py > before.json   # on the old code
    python scripts/output_hashes.py > after.json    # on the new code
    diff before.json after.json                      # a refactor must leave them identical

For the same seeds a behaviour-preserving change gives the same tokens, so the same hashes.
Each (method, setting) row hashes the token ids of 4 prompts x 32 new tokens; the counts of
target forwards and accepted drafts are recorded beside them, since a refactor that keeps
the tokens but changes how they were reached is a change too.
"""

from __future__ import annotations

import hashlib
import json
import sys

import torch

import tokenleap

PROMPTS = ["What is the capital of France?", "Write a Python function that reverses a string.",
           "Summarize: The quick brown fox jumps over the lazy dog. It was a sunny day.",
           "Translate to English: Der Hund schläft im Garten."]
SETTINGS = [("ar", {}), ("sps", {"gamma": 4}), ("sps", {"gamma": 3, "stop_below": 0.3}),
            ("mtad", {"gamma": 4, "beam_width": 4, "tau": 0.5}), ("mtad-tree", {"gamma": 3, "beam_width": 3}),
            ("pass", {}), ("pass", {"lookahead": 2, "scheme": "two-call"}),
            ("pass", {"lookahead": 2, "scheme": "merged"}), ("ppd", {})]
SAMPLING = [{"temperature": 0.0}, {"temperature": 1.0, "top_k": 10, "top_p": 0.9}]


def main() -> None:
    torch.set_num_threads(2)
    target = tokenleap.load_model(tokenleap.DEFAULT_MODEL, dtype="fp32", kernels_layout="dense")
    draft = tokenleap.load_model("smollm2-135m-draft", dtype="fp32", kernels_layout="dense")
    out = {}
    for method, opts in SETTINGS:
        for sampling in SAMPLING:
            if method == "ppd" and sampling["temperature"] > 0:
                continue  # greedy only
            tokens, forwards, accepted = [], 0, 0
            for seed, prompt in enumerate(PROMPTS):
                r = tokenleap.generate(prompt, method=method, model=target,
                                       draft=draft if tokenleap.METHODS[method].needs_draft else None,
                                       max_new_tokens=32, seed=seed, **sampling, **opts)
                tokens.append(r.token_ids)
                forwards += r.stats.target_forwards
                accepted += r.stats.accepted
            key = f"{method}{json.dumps(opts, sort_keys=True)} T={sampling['temperature']}"
            out[key] = {"tokens": hashlib.sha256(json.dumps(tokens).encode()).hexdigest()[:16],
                        "target_forwards": forwards, "accepted": accepted}
            print(key, out[key], file=sys.stderr)
    print(json.dumps(out, indent=1, sort_keys=True))


if __name__ == "__main__":
    main()
