"""Write the bundled demo datasets: `python core/demo_data/generate.py` (deterministic, seed 1234).

Both are synthetic, made here from templates and word lists, so they ship without licence
questions and stay small:

- sentiment.jsonl: short product, film and restaurant reviews labelled positive or negative.
  Reviews mix clauses of both polarities (contrasts, negations such as "not worth it"), so no
  single word decides the label, yet the overall tone is clear enough for a small pretrained
  encoder to learn it in a couple of epochs.
- instructions.jsonl: tiny deterministic tasks (reverse a word, add digits, antonyms...) that a
  randomly initialised ~1M-parameter language model starts to learn within minutes on a CPU.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

SEED = 1234
HERE = Path(__file__).resolve().parent

DOMAINS = json.loads((HERE / "review_domains.json").read_text(encoding="utf-8"))
"""Per review domain (product, movie, restaurant): the things reviewed, their aspects, the opening
sentences and the domain's own endings; a table of word lists, so it is kept as data."""
GOOD = ["great", "excellent", "wonderful", "fantastic", "superb", "delightful", "impressive", "lovely", "solid",
        "brilliant", "outstanding", "pleasant", "charming", "reliable", "top notch", "amazing"]
BAD = ["terrible", "awful", "disappointing", "poor", "bland", "boring", "mediocre", "dreadful", "sloppy",
       "flimsy", "overpriced", "weak", "forgettable", "annoying", "cheap looking", "a letdown"]
STRONG = ["really", "truly", "genuinely", "quite", "surprisingly", "incredibly", "pretty"]
GOOD_CLAUSES = ["the {aspect} was {strong} {good}", "I loved the {aspect}", "the {aspect} really impressed me",
                "the {aspect} was not {bad} at all", "nothing about the {aspect} disappointed me",
                "the {aspect} exceeded my expectations", "the {aspect} was {good}"]
BAD_CLAUSES = ["the {aspect} was {strong} {bad}", "I hated the {aspect}", "the {aspect} let me down",
               "the {aspect} was not {good} at all", "the {aspect} was far from {good}",
               "the {aspect} could have been much better", "the {aspect} was {bad}"]
GOOD_END = ["Highly recommended.", "Five stars from me.", "A real gem.", "Would recommend to anyone."]
BAD_END = ["Not recommended.", "One star.", "Avoid it.", "What a waste of money.", "I would not recommend it."]
OVERALL_GOOD = ["but overall it was a {good} {thing}", "but in the end I enjoyed it", "but it was still worth it"]
OVERALL_BAD = ["but overall it was a {bad} {thing}", "but in the end it was not worth it",
               "but that could not save it"]


def review(rng: random.Random, positive: bool) -> str:
    """One review whose overall tone is `positive`; some shapes include an opposite-tone clause."""
    domain = DOMAINS[rng.choice(sorted(DOMAINS))]
    thing = rng.choice(domain["things"])
    a1, a2 = rng.sample(domain["aspects"], 2)

    def clause(good: bool, aspect: str) -> str:
        template = rng.choice(GOOD_CLAUSES if good else BAD_CLAUSES)
        return template.format(aspect=aspect, strong=rng.choice(STRONG), good=rng.choice(GOOD), bad=rng.choice(BAD))

    end = rng.choice((domain["good_end"] + GOOD_END) if positive else (domain["bad_end"] + BAD_END))
    opener = rng.choice(domain["openers"]).format(thing=thing)
    shape = rng.random()
    if shape < 0.35:
        text = f"{opener} {cap(clause(positive, a1))}. {end}"
    elif shape < 0.6:
        text = f"{cap(clause(positive, a1))} and {clause(positive, a2)}. {end}"
    elif shape < 0.8:
        text = f"{opener} Although {clause(not positive, a1)}, {clause(positive, a2)}. {end}"
    else:
        overall = rng.choice(OVERALL_GOOD if positive else OVERALL_BAD)
        overall = overall.format(good=rng.choice(GOOD), bad=rng.choice(BAD), thing=thing)
        text = f"{cap(clause(not positive, a1))}, {overall}."
    return " ".join(text.split())


def cap(text: str) -> str:
    return text[0].upper() + text[1:]


def sentiment_rows(rng: random.Random, n: int = 800) -> list[dict[str, str]]:
    """Exactly n/2 rows of each label, no duplicate texts, in shuffled order."""
    rows, seen = [], set()
    for positive in (True, False):
        count = 0
        while count < n // 2:
            text = review(rng, positive)
            if text not in seen and 8 <= len(text.split()) <= 30:
                seen.add(text)
                rows.append({"text": text, "label": "positive" if positive else "negative"})
                count += 1
    rng.shuffle(rows)
    return rows


WORDS = """cat dog sun moon tree fish bird book lamp door road ship star rain snow wind fire milk bread cake
apple lemon grape melon peach plum pear corn rice salt sugar honey water stone river lake hill field
garden house room chair table clock phone paper pencil brush paint music song dance game ball kite
boat train plane truck wheel bell ring coin gold silver green blue black white brown pink red yellow
happy sad quick slow warm cold soft loud quiet early late small large short tall young old clean dark
light heavy sharp smooth sweet bitter fresh brave calm proud jump run walk swim sing read write draw
cook bake wash open close push pull throw catch build climb smile laugh cry sleep dream think
window pillow blanket basket bottle button candle carpet castle circle cookie dragon forest island
jacket kitten ladder letter market mirror monkey number orange parrot pepper pocket rabbit robot
rocket shadow silence spider summer winter tiger tomato turtle wallet winner yellow zebra
anchor banana camera doctor engine farmer guitar hammer jungle lizard magnet napkin ocean planet
puzzle saddle tunnel violin wagon yogurt bridge cloud frog goat horse lion mouse owl snake wolf
bean cheese onion potato carrot garlic butter flour juice soup desk shelf floor roof wall gate
fence path beach coast valley desert""".split()
ANTONYMS = [("hot", "cold"), ("big", "small"), ("up", "down"), ("fast", "slow"), ("happy", "sad"),
            ("light", "dark"), ("open", "closed"), ("early", "late"), ("full", "empty"), ("hard", "soft"),
            ("high", "low"), ("old", "new"), ("rich", "poor"), ("wet", "dry"), ("loud", "quiet"),
            ("long", "short"), ("thick", "thin"), ("strong", "weak"), ("clean", "dirty"), ("good", "bad"),
            ("left", "right"), ("near", "far"), ("first", "last"), ("day", "night"), ("win", "lose"),
            ("push", "pull"), ("buy", "sell"), ("true", "false"), ("inside", "outside"), ("begin", "end"),
            ("sweet", "sour"), ("brave", "afraid"), ("question", "answer"), ("friend", "enemy"), ("yes", "no"),
            ("in", "out"), ("on", "off"), ("over", "under"), ("before", "after"), ("always", "never")]


def instruction_rows(rng: random.Random) -> list[dict[str, str]]:
    """About 1,500 unique prompts over nine task families, in shuffled order."""
    words = list(dict.fromkeys(WORDS))
    rows: list[dict[str, str]] = []

    def take(items: list[tuple[str, str]], n: int) -> None:
        rng.shuffle(items)
        rows.extend({"prompt": p, "completion": c} for p, c in items[:n])

    take([(f"Reverse the word: {w}", w[::-1]) for w in words], 200)
    take([(f"Repeat twice: {w}", f"{w} {w}") for w in words], 200)
    take([(f"First letter of {w}?", w[0]) for w in words], 180)
    take([(f"Last letter of {w}?", w[-1]) for w in words], 180)
    take([(f"How many letters in {w}?", str(len(w))) for w in words], 160)
    pairs = [f"{a} {b}" for a in words[:60] for b in words[60:120]]
    take([(f"Uppercase: {p}", p.upper()) for p in pairs], 345)
    take([(f"What is {a} + {b}?", str(a + b)) for a in range(10) for b in range(10)], 100)
    take([(f"What is {a} - {b}?", str(a - b)) for a in range(10) for b in range(a + 1)], 55)
    take([(f"Opposite of {a}?", b) for a, b in ANTONYMS] + [(f"Opposite of {b}?", a) for a, b in ANTONYMS], 80)
    unique = list({row["prompt"]: row for row in rows}.values())
    rng.shuffle(unique)
    return unique


def write_jsonl(path: Path, rows: list[dict[str, str]]) -> None:
    with path.open("w", encoding="utf-8", newline="\n") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")


def main() -> None:
    rng = random.Random(SEED)
    write_jsonl(HERE / "sentiment.jsonl", sentiment_rows(rng))
    write_jsonl(HERE / "instructions.jsonl", instruction_rows(rng))


if __name__ == "__main__":
    main()
