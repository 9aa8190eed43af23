"""Training prompts built from templates, deterministic and disjoint from Spec-Bench.

Self-distillation needs text the target itself writes; these prompts only steer it across
the kinds of tasks chat models see (writing, reasoning, maths, code, extraction, STEM,
humanities, translation, summarisation, QA, roleplay). `is_disjoint` checks the set shares
no prompt with a Spec-Bench file."""

from __future__ import annotations

import json
import re
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


# Spec-Bench's big categories (translation, summarisation, QA, maths word problems, RAG)
# in our own words: templates with slots, never its text.
DOCUMENTS = [
    "Write a news article about {t}.", "Write an encyclopedia entry about {t}.",
    "Write a detailed report on recent developments in {t}.",
]
EVENTS = [
    "a flood", "a new bridge opening", "a city council election", "a music festival", "a factory closing",
    "a heat wave", "a train strike", "a new hospital", "a football final", "a museum robbery",
    "a tech company merger", "a school reform", "a power outage", "a marathon", "a food price rise",
    "a rescue at sea",
]
CITIES = ["Lisbon", "Nairobi", "Toronto", "Osaka", "Melbourne", "Lyon", "Denver", "Krakow", "Lima", "Dublin",
          "Seoul", "Cape Town"]
QUESTIONS = [
    "What is {t}?", "Describe the main facts about {t}.", "Why does {t} matter to people?",
    "What are the key points about {t} in the text above?", "Explain how {t} works.",
    "What problems are connected with {t}?",
]
GERMAN_SUBJECTS = [
    "Die Regierung", "Der Bürgermeister", "Die Polizei", "Viele Menschen", "Das Unternehmen", "Die Schüler",
    "Mein Nachbar", "Die Europäische Union", "Der Trainer", "Die Wissenschaftler", "Die Stadt", "Der Verein",
]
GERMAN_PREDICATES = [
    "hat am Montag neue Pläne vorgestellt", "will die Steuern senken", "kritisiert die Entscheidung scharf",
    "hat ein neues Gesetz beschlossen", "sucht nach einer Lösung für das Problem",
    "erwartet ein starkes Wachstum im nächsten Jahr", "warnt vor steigenden Preisen", "feiert den Erfolg",
    "hat die Verhandlungen abgebrochen", "will mehr Geld in Schulen investieren",
    "hat den Vertrag nicht verlängert", "bereitet sich auf den Winter vor",
]
GERMAN_ENDINGS = ["", " , sagte ein Sprecher am Dienstag", " in Berlin", " trotz heftiger Kritik",
                  " , wie die Zeitung berichtet", " nach monatelangen Gesprächen"]
QA = [
    ("Who invented {x}?", ["the telephone", "the light bulb", "the printing press", "the airplane", "the radio",
                           "the steam engine", "the bicycle", "the television", "the vaccine", "the computer"]),
    ("What is the capital of {x}?", ["Canada", "Australia", "Kenya", "Peru", "Norway", "Vietnam", "Egypt",
                                     "Chile", "Poland", "Turkey"]),
    ("When did {x} happen?", ["the first Moon landing", "the fall of the Berlin Wall", "the Black Death",
                              "the first Olympic Games", "the American Revolution", "the Great Depression"]),
    ("Where is {x} located?", ["the Eiffel Tower", "Mount Kilimanjaro", "the Sahara", "Machu Picchu",
                               "the Great Barrier Reef", "Angkor Wat", "the Taj Mahal"]),
    ("How many {x}?", ["bones are in the human body", "players are on a soccer team", "planets are in the solar system",
                       "strings does a guitar have", "days are in a leap year", "keys does a piano have"]),
    ("Why is {x}?", ["the sky blue", "the sea salty", "ice slippery", "the sun hot", "grass green"]),
    ("Who wrote {x}?", ["Hamlet", "Pride and Prejudice", "the Odyssey", "War and Peace", "Don Quixote",
                        "The Little Prince", "Moby Dick"]),
]
NAMES = ["Maria", "Tom", "Aisha", "Ben", "Lena", "Carlos", "Yuki", "Omar", "Priya", "Jack", "Sofia", "Noah"]
WORD_PROBLEMS = [
    "{n} buys {a} boxes of apples. Each box holds {b} apples. {n} gives away {c} apples. How many apples are left?",
    "{n} earns ${a} per hour and works {b} hours a week. How much does {n} earn in {c} weeks?",
    "A bakery makes {a} loaves a day and sells {b} of them. How many loaves are unsold after {c} days?",
    "{n} reads {b} pages a day. The book has {a} pages. How many days will it take to finish the book?",
    "{n} has ${a}. A shirt costs ${b} and a hat costs ${c}. How much money is left after buying both?",
    "A farmer has {a} chickens and {b} cows. How many legs do the animals have in total?",
    "{n} runs {b} km on weekdays and {c} km on each weekend day. How far does {n} run in a week?",
    "A class of {a} students is split into groups of {c}. How many full groups are there, and how many "
    "students are left over?",
    "{n} saves ${b} every month. After {c} months, {n} spends ${a}. How much is saved now?",
    "A tank holds {a} liters. It leaks {c} liters per hour. How many liters remain after {b} hours?",
]


def topical_prompts(rng: random.Random) -> list[str]:
    """Writing, explaining, maths and code prompts over the topic lists (the original set)."""
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
    return sorted(pool)


def word_problem(template: str, rng: random.Random) -> str:
    """A word-problem template with a name and numbers drawn from rng (always in this order)."""
    return template.format(n=rng.choice(NAMES), a=rng.randint(12, 400), b=rng.randint(2, 30), c=rng.randint(2, 11))


def short_task_prompts(rng: random.Random) -> list[str]:
    """Translation, short factual questions and word problems."""
    pool = [f"Translate German to English: {s} {p}{e} ."
            for s in GERMAN_SUBJECTS for p in GERMAN_PREDICATES for e in GERMAN_ENDINGS]
    pool += [q.format(x=x) for q, xs in QA for x in xs]
    pool += [word_problem(template, rng) for template in WORD_PROBLEMS for _ in range(60)]
    return sorted(set(pool))


def document_prompts(n: int, seed: int = 0) -> list[tuple[str, str]]:
    """(subject, prompt) for documents the target writes, to be summarised and questioned
    later (see `training_prompts`)."""
    rng = random.Random(seed)
    pool = [(t, d.format(t=t)) for d in DOCUMENTS for t in TOPICS]
    pool += [(f"the {e[2:]} in {c}", f"Write a news report about {e} in {c}.") for e in EVENTS for c in CITIES]
    rng.shuffle(pool)
    return pool[:n]


def training_prompts(n: int, seed: int = 0, documents: list[tuple[str, str]] = ()) -> list[str]:
    """n distinct prompts, the same for the same seed and documents.

    `documents` are (subject, text) pairs the target wrote; with them, about a third of the
    prompts are long ones, as in Spec-Bench: "Summarize: <text>" and passages followed by
    a question (RAG). The rest are short tasks and topical prompts in equal parts.
    """
    rng = random.Random(seed)
    topical, short = topical_prompts(rng), short_task_prompts(rng)
    rng.shuffle(topical)
    rng.shuffle(short)
    long: list[str] = []
    docs = list(documents)
    for i, (subject, text) in enumerate(docs):
        other = docs[(i * 7 + 3) % len(docs)][1]
        long.append(f"Summarize: {text}")
        long.append(f"{other}\n{text}\n{rng.choice(QUESTIONS).format(t=subject)}")
    long = sorted(set(long))  # two documents can come out the same
    rng.shuffle(long)
    n_long = min(len(long), n // 3)
    n_short = min(len(short), (n - n_long) // 2)
    picked = long[:n_long] + short[:n_short]
    taken = set(picked)
    rest = [p for p in topical + short[n_short:] + long[n_long:] if p not in taken]
    picked += rest[: n - len(picked)]
    if len(picked) < n:
        raise ValueError(f"only {len(picked)} distinct training prompts available, asked for {n}")
    rng.shuffle(picked)
    return picked


def is_disjoint(prompts: list[str], spec_bench_file: str | Path) -> bool:
    """True when no prompt equals any turn of a Spec-Bench jsonl file."""
    turns = set()
    for line in Path(spec_bench_file).read_text().splitlines():
        if line.strip():
            turns.update(t.strip() for t in json.loads(line)["turns"])
    return not any(p.strip() in turns for p in prompts)


# -- prompt set "corpora": real prose in Spec-Bench's task shapes ------------------------------
ENTITY_QUESTIONS = [
    "Who is {e}?", "What is {e}?", "When was {e} founded?", "Where is {e}?", "What is {e} known for?",
    "When did {e} begin?", "Who founded {e}?", "How many people live in {e}?", "What year was {e} created?",
    "Who wrote {e}?", "Where did {e} take place?", "What language is spoken in {e}?", "What happened to {e}?",
    "Why is {e} famous?", "When did {e} die?", "Who plays {e}?", "What does {e} mean?", "How big is {e}?",
    "Where was {e} born?", "Which country is {e} in?", "What type of music is {e}?", "How did {e} end?",
]
ENTITY_TASKS = [
    "Write a short blog post about {e}.", "Explain {e} to a ten-year-old.", "Give me five facts about {e}.",
    "Write a poem about {e}.", "Write a short story that involves {e}.", "Describe the history of {e} briefly.",
    "What are common misconceptions about {e}?", "Create a quiz with three questions about {e}, with answers.",
    "Pretend you are a tour guide and talk about {e}.", "Write a persuasive paragraph about why {e} matters.",
    "Imagine you are {e}. Introduce yourself in a few sentences.", "Write a dialogue between two students about {e}.",
    "Compare {e} and {f}. Which one is more important, and why?", "Write a catchy headline and a short article "
    "about {e}.", "Draft an email to a friend recommending that they read about {e}.",
    "Act as a history teacher and give a short lesson on {e}.", "What would the world be like without {e}?",
    "Outline a presentation about {e} with five slides.", "Explain how {e} is connected to {f}.",
]
EXTRACTION = [
    "Extract all the names of people, places and organisations in the following text. Output them in JSON.\n{p}",
    "List every year and date mentioned in the text below, with what happened then.\n{p}",
    "Identify the main topic of the following paragraph and three keywords.\n{p}",
    "Read the passage and answer in one sentence: what is it about?\n{p}",
    "Turn the following text into a bulleted list of facts.\n{p}",
    "Rate the tone of this text from 1 (negative) to 5 (positive) and explain.\n{p}",
]
MORE_WORD_PROBLEMS = [
    "{n} bought {c} notebooks for ${b} each and a backpack for ${a}. How much did {n} spend in total?",
    "A school has {a} students. {c} out of every 10 students walk to school. How many students walk to school?",
    "{n} is {c} years old. Their mother is {b} years older than three times {n}'s age. How old is the mother?",
    "A recipe needs {c} eggs for every {b} cookies. How many eggs are needed for {a} cookies?",
    "A phone costs ${a}. It is on sale for {b}% off. What is the sale price?",
    "{n} plants {c} rows of {b} tomato plants. Each plant gives {c} tomatoes. How many tomatoes are there?",
    "A bus can carry {b} people. How many buses are needed for {a} people?",
    "{n} swims {c} laps every day for {b} days, then twice as many laps for {c} days. How many laps in total?",
    "The price of a ticket rose from ${b} to ${a}. By how much did the price increase, in percent?",
    "{n} has {a} stickers and gives {c} stickers to each of {b} friends. How many stickers does {n} have left?",
    "A car uses {c} liters of fuel per 100 km. How much fuel does it need for {a} km?",
    "{n} sells lemonade for ${c} a cup. On Saturday {n} sells {b} cups and on Sunday {a} cups. "
    "How much money does {n} make?",
]


def _sentence_case(text: str) -> str:
    """NQ-style: first letter capitalised, the rest lower-case."""
    return text[:1].upper() + text[1:].lower()


def _wmt_spacing(text: str) -> str:
    """Spaces before punctuation, as in tokenised news test sets."""
    return re.sub(r"\s*([.,!?;:])(\s|$)", r" \1\2", text).strip()


def _words(articles: list[dict], rng: random.Random, lo: int, hi: int) -> tuple[str, str]:
    """(title, text): `lo`-`hi` words of consecutive paragraphs from a random article."""
    art = rng.choice(articles)
    start = rng.randrange(len(art["paragraphs"]))
    words = []
    for para in art["paragraphs"][start:]:
        words += para.split()
        if len(words) >= hi:
            break
    target = rng.randint(lo, hi)
    return art["title"], " ".join(words[:target])


def corpus_prompts(n: int, seed: int = 0, sources: dict | None = None) -> list[str]:
    """n distinct prompts over real text (see `corpora`), in Spec-Bench's task shapes and
    proportions: a sixth each of translation (German→English), summarisation (news and
    Wikipedia), short questions about named entities, maths word problems, RAG (about 500 words
    of Wikipedia, then a question), and MT-bench-like tasks (writing, roleplay, extraction,
    coding, maths...) over those entities.

    sources: {"articles": [{"title", "paragraphs"}], "entities", "news", "german"} (lists of
    str); by default `corpora.load_all()`, which downloads them once."""
    from . import corpora

    rng = random.Random(seed)
    sources = sources if sources is not None else corpora.load_all()
    articles, entities, news, german = (sources[k] for k in ("articles", "entities", "news", "german"))
    share = n * 11 // 60 + 1  # a tenth over a sixth: a few prompts come out twice
    families: list[list[str]] = []
    families.append([f"Translate German to English: {_wmt_spacing(g) if rng.random() < 0.5 else g}"
                     for g in rng.sample(german, min(share, len(german)))])
    summaries = [f"Summarize: {a}" for a in rng.sample(news, min(len(news), share // 3))]
    while len(summaries) < share:
        summaries.append(f"Summarize: {_words(articles, rng, 150, 900)[1]}")
    families.append(summaries)
    families.append([_sentence_case(rng.choice(ENTITY_QUESTIONS).format(e=e)) for e in rng.sample(entities, share)])
    families.append([word_problem(rng.choice(WORD_PROBLEMS + MORE_WORD_PROBLEMS), rng) for _ in range(share)])
    rag = []
    for _ in range(share):
        title, text = _words(articles, rng, 480, 520)
        question = rng.choice(ENTITY_QUESTIONS + QUESTIONS).format(e=title, t=title)
        rag.append(f"{title} {text}\n{_sentence_case(question)}")
    families.append(rag)
    mixed = []
    for i in range(share):
        kind = i % 4
        if kind < 2:
            mixed.append(rng.choice(ENTITY_TASKS).format(e=rng.choice(entities), f=rng.choice(entities)))
        elif kind == 2:
            mixed.append(rng.choice(EXTRACTION).format(p=_words(articles, rng, 60, 250)[1]))
        else:
            a, b = rng.randint(2, 300), rng.randint(2, 60)
            f, g = rng.choice(FUNCS)
            mixed.append(rng.choice([t.format(a=a, b=b, c=a * rng.randint(2, 9) + b) for t in MATH]
                                    + [t.format(f=f, g=g) for t in CODE]))
    families.append(mixed)
    # Round-robin over the families so any prefix of the list keeps the proportions.
    picked, seen = [], set()
    for group in zip(*families):
        for p in group:
            if p not in seen:
                seen.add(p)
                picked.append(p)
    if len(picked) < n:
        raise ValueError(f"only {len(picked)} distinct corpus prompts available, asked for {n}")
    picked = picked[:n]
    rng.shuffle(picked)
    return picked
