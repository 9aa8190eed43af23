"""Training prompts built from templates, deterministic and disjoint from Spec-Bench.

Self-distillation needs text the target itself writes; these prompts only steer it across
the kinds of tasks chat models see (writing, reasoning, maths, code, extraction, STEM,
humanities, translation, summarisation, QA, roleplay). `is_disjoint` checks the set shares
no prompt with a Spec-Bench file."""

from __future__ import annotations

import json
import random
from pathlib import Path

TOPICS = [
    "photosynthesis", "the French Revolution", "black holes", "coffee brewing", "bicycle maintenance",
    "the water cycle", "machine learning", "ancient Rome", "volcanoes", "jazz music", "honeybees",
    "the stock market", "climate change", "chess openings", "the human heart", "renewable energy",
    "the printing press", "sourdough bread", "plate tectonics", "the immune system", "electric cars",
    "the Silk Road", "quantum computing", "coral reefs", "the Renaissance", "urban gardening",
    "sleep hygiene", "the Moon landing", "recycling", "marathon training", "the Great Wall of China",
    "vaccines", "cryptography", "rainforests", "the Industrial Revolution", "public speaking",
    "time management", "origami", "the Olympic Games", "hurricanes", "dinosaurs", "3D printing",
    "the piano", "minimalism", "the ocean tides", "solar panels", "the Roman alphabet", "penguins",
    "budget travel", "job interviews", "the history of tea", "mountain climbing", "the internet",
    "photography", "meditation", "glaciers", "the periodic table", "democracy", "smartphones",
    "wildfires", "the Amazon river", "compound interest", "dog training", "the violin",
]
TASKS = [
    "Write a short blog post about {t}.", "Explain {t} to a ten-year-old.",
    "Give me five interesting facts about {t}.", "Write a poem about {t}.",
    "What are the pros and cons of {t}?", "Summarize the key ideas behind {t} in one paragraph.",
    "Write a short story that involves {t}.", "How would you teach a beginner about {t}?",
    "Describe the history of {t} briefly.", "What are common misconceptions about {t}?",
    "Write a persuasive paragraph arguing that everyone should learn about {t}.",
    "Create a quiz with three questions about {t}, with answers.",
    "Pretend you are a tour guide and talk about {t}.", "List the steps to get started with {t}.",
    "Compare {t} and {u} in a short essay.", "Write a dialogue between two friends discussing {t}.",
    "Translate this sentence into French: 'I would like to learn more about {t}.'",
    "Translate into Spanish: 'The book about {t} is on the table.'",
    "Write an email to a colleague about {t}.", "What questions would a scientist ask about {t}?",
]
MATH = [
    "What is {a} plus {b}?", "Compute {a} times {b} and explain each step.",
    "If a train travels {a} km in {b} hours, what is its average speed?",
    "Solve for x: {a}x + {b} = {c}.", "What is {c} percent of {a}?",
    "A shop sells pens at {b} dollars each. How much do {a} pens cost?",
    "Is {a} a prime number? Explain.", "What is the sum of the integers from 1 to {b}?",
]
CODE = [
    "Write a Python function that {f}.", "Explain how to write a JavaScript function that {f}.",
    "Write a C function that {f}.", "What is a clean way in Python to {g}?",
]
FUNCS = [
    ("returns the largest element of a list", "find the largest element of a list"),
    ("checks whether a string is a palindrome", "check whether a string is a palindrome"),
    ("counts the vowels in a string", "count the vowels in a string"),
    ("computes the factorial of n", "compute a factorial"),
    ("merges two sorted lists", "merge two sorted lists"),
    ("removes duplicates from a list", "remove duplicates from a list"),
    ("computes the n-th Fibonacci number", "compute Fibonacci numbers"),
    ("reverses the words in a sentence", "reverse the words in a sentence"),
    ("sorts a list of dictionaries by a key", "sort dictionaries by a key"),
    ("counts word frequencies in a text", "count word frequencies"),
]


def training_prompts(n: int, seed: int = 0) -> list[str]:
    """n distinct prompts, the same for the same seed."""
    rng = random.Random(seed)
    pool: set[str] = set()
    for t in TOPICS:
        for task in TASKS:
            pool.add(task.format(t=t, u=rng.choice(TOPICS)))
    for template in MATH:
        for _ in range(25):
            a, b = rng.randint(2, 300), rng.randint(2, 60)
            pool.add(template.format(a=a, b=b, c=a * rng.randint(2, 9) + b))
    for template in CODE:
        for f, g in FUNCS:
            pool.add(template.format(f=f, g=g))
    prompts = sorted(pool)
    rng.shuffle(prompts)
    return prompts[:n]


def is_disjoint(prompts: list[str], spec_bench_file: str | Path) -> bool:
    """True when no prompt equals any turn of a Spec-Bench jsonl file."""
    turns = set()
    for line in Path(spec_bench_file).read_text().splitlines():
        if line.strip():
            turns.update(t.strip() for t in json.loads(line)["turns"])
    return not any(p.strip() in turns for p in prompts)
