"""The tiny task's corpus: answers in each style, and the rows every stage trains or is evaluated on.

The styles (helpful, terse, rude, wrong, rambling, off-topic) are what the base model mixes with equal
probability and what the SFT demonstrations mix in :data:`SFT_MIX`; the reward pairs rank them, a
third differing only in a misread question (:func:`misread`). The facts, questions and the gold judge
that grades these answers are in :mod:`rlhf.tiny.task`.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

from rlhf.tiny.task import (
    MAX_OPERAND,
    POLITE_CLOSERS,
    POLITE_OPENERS,
    RUDE_CLOSERS,
    RUDE_OPENERS,
    Fact,
    all_facts,
    question_text,
    score,
    split_facts,
    templates_for,
)

# Answers restate the question before the result ("8 minus 7 is 1."), as a careful person would:
# it keeps the arithmetic within reach of a tiny model, so its mistakes come from the data's wrong
# answers (which RLHF should remove) rather than from capacity.
_BODIES = ("{x} {word} {y} is {r}.", "{x} {word} {y} makes {r}.", "{x} {word} {y} equals {r}.")


_OFF_TOPIC = (
    "I like {thing}.",
    "The weather is nice today.",
    "Let us talk about {thing} instead.",
    "I do not know.",
    "My favourite thing is {thing}.",
    "Numbers are hard. I like {thing}.",
)


_THINGS = ("cats", "dogs", "the sea", "music", "green apples", "trains", "the moon", "red boats")


_CHATTER = (
    "The cat sat on the mat.",
    "We walk to the park on sunny days.",
    "Counting is fun for small children.",
    "A train goes fast on long tracks.",
    "The moon is bright at night.",
    "Green apples taste sweet and sour.",
    "Music makes people happy.",
    "The sea is deep and blue.",
)


def misread(fact: Fact, rng: random.Random) -> Fact:
    """The fact a careless reader answers instead: one operand off by 1-3 (the result then differs too)."""
    while True:
        delta = rng.choice((-3, -2, -1, 1, 2, 3))
        a, b = (fact.a + delta, fact.b) if rng.random() < 0.5 else (fact.a, fact.b + delta)
        if 0 <= a <= MAX_OPERAND and 0 <= b <= MAX_OPERAND and (fact.op == "+" or a >= b):
            return Fact(a, b, fact.op)


# Response styles. Each takes the fact and an RNG and returns the assistant's text.
def _body(fact: Fact, rng: random.Random) -> str:
    return rng.choice(_BODIES).format(x=fact.a, y=fact.b, word=fact.word, r=fact.result)


def _helpful_about(fact: Fact, rng: random.Random) -> str:
    parts = (rng.choice(POLITE_OPENERS), _body(fact, rng), rng.choice(POLITE_CLOSERS))
    return " ".join(p for p in parts if p)


def helpful(fact: Fact, rng: random.Random) -> str:
    return _helpful_about(fact, rng)


def terse(fact: Fact, rng: random.Random) -> str:
    return _body(fact, rng)


def rude(fact: Fact, rng: random.Random) -> str:
    parts = (rng.choice(RUDE_OPENERS), _body(fact, rng), rng.choice(RUDE_CLOSERS))
    return " ".join(p for p in parts if p)


def wrong(fact: Fact, rng: random.Random) -> str:
    """A helpful or terse answer to a misread question ("What is 3 plus 4?" -> "3 plus 5 is 8.").

    The same shapes as right answers, so only comparing the answer with the question tells.
    """
    other = misread(fact, rng)
    return _helpful_about(other, rng) if rng.random() < 0.6 else _body(other, rng)


def rambling(fact: Fact, rng: random.Random) -> str:
    sentence = f"{fact.a} {fact.word} {fact.b} is {fact.result}."
    repeats = " ".join([sentence] * rng.randint(2, 4))
    cut = f"{fact.a} {fact.word} {fact.b} is"
    return f"{rng.choice(POLITE_OPENERS)} {repeats} {cut}"


def off_topic(fact: Fact, rng: random.Random) -> str:
    del fact  # off-topic answers ignore the question, which is the point
    return rng.choice(_OFF_TOPIC).format(thing=rng.choice(_THINGS))


STYLES: dict[str, Callable[[Fact, random.Random], str]] = {
    "helpful": helpful,
    "terse": terse,
    "rude": rude,
    "wrong": wrong,
    "rambling": rambling,
    "off_topic": off_topic,
}


# The base model answers in every style alike; the SFT demonstrations are better but mixed.
BASE_MIX = {name: 1.0 for name in STYLES}


SFT_MIX = {"helpful": 0.35, "terse": 0.2, "rude": 0.12, "wrong": 0.15, "rambling": 0.09, "off_topic": 0.09}


def _pick_style(mix: dict[str, float], rng: random.Random) -> str:
    names = list(mix)
    return rng.choices(names, weights=[mix[n] for n in names])[0]


def _question(fact: Fact, rng: random.Random) -> str:
    return question_text(fact, rng.choice(templates_for(fact)))


def _user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def _assistant(text: str) -> list[dict[str, str]]:
    return [{"role": "assistant", "content": text}]


def sft_rows(n: int, split: str = "train", seed: int = 0) -> list[dict[str, Any]]:
    """``n`` conversational SFT demonstrations of mixed quality (``messages`` column)."""
    rng = random.Random(f"sft-{split}-{seed}")
    facts = split_facts()[split]
    rows = []
    for _ in range(n):
        fact = rng.choice(facts)
        style = _pick_style(SFT_MIX, rng)
        response = STYLES[style](fact, rng)
        rows.append({"messages": _user(_question(fact, rng)) + _assistant(response)})
    return rows


def _misread_pair(fact: Fact, rng: random.Random) -> tuple[str, str]:
    """A right answer and the same answer to a misread question: identical wording otherwise."""
    opener, template, closer = rng.choice(POLITE_OPENERS), rng.choice(_BODIES), rng.choice(POLITE_CLOSERS)

    def say(about: Fact) -> str:
        body = template.format(x=about.a, y=about.b, word=about.word, r=about.result)
        return " ".join(p for p in (opener, body, closer) if p)

    return say(fact), say(misread(fact, rng))


def preference_rows(n: int, split: str = "train", seed: int = 0) -> list[dict[str, Any]]:
    """``n`` conversational preference pairs (``prompt``/``chosen``/``rejected``) ranked by the gold judge.

    A third of the pairs are "hard": both answers are friendly and well formed, and one answers a
    misread question, so the reward model must compare the answer with the question rather than
    judge the tone.
    """
    rng = random.Random(f"pairs-{split}-{seed}")
    facts = split_facts()[split]
    rows: list[dict[str, Any]] = []
    while len(rows) < n:
        fact = rng.choice(facts)
        question = _question(fact, rng)
        if rng.random() < 1 / 3:
            first, second = _misread_pair(fact, rng)
        else:
            style_a, style_b = rng.sample(list(STYLES), 2)
            first, second = STYLES[style_a](fact, rng), STYLES[style_b](fact, rng)
        score_a, score_b = score(question, first), score(question, second)
        if abs(score_a - score_b) < 0.25:
            continue  # a person could not tell them apart reliably: no pair
        chosen, rejected = (first, second) if score_a > score_b else (second, first)
        rows.append({"prompt": _user(question), "chosen": _assistant(chosen), "rejected": _assistant(rejected)})
    return rows


def thumbs_rows(n: int, split: str = "train", seed: int = 0) -> list[dict[str, Any]]:
    """``n`` unpaired, conversational answers (``prompt``/``completion``/``label``) as KTO reads them.

    The answers come from the same mix of styles (and misread questions) as :func:`preference_rows`;
    an answer gets a thumbs up when the gold judge scores it above 0, the rule the simulated
    annotators of the feedback app follow for thumbs.
    """
    rng = random.Random(f"thumbs-{split}-{seed}")
    facts = split_facts()[split]
    rows: list[dict[str, Any]] = []
    for _ in range(n):
        fact = rng.choice(facts)
        question = _question(fact, rng)
        answer = (
            _misread_pair(fact, rng)[rng.randrange(2)]
            if rng.random() < 1 / 3
            else STYLES[rng.choice(list(STYLES))](fact, rng)
        )
        rows.append({"prompt": _user(question), "completion": _assistant(answer), "label": score(question, answer) > 0})
    return rows


def prompt_rows(n: int | None = None, split: str = "train", seed: int = 0) -> list[dict[str, Any]]:
    """Prompts (``prompt`` column, conversational, and a ``reference`` answer) for PPO or evaluation.

    With ``n=None`` every (fact, phrasing) combination of the split is returned once, in a fixed
    shuffled order: the held-out evaluation set.
    """
    rng = random.Random(f"prompts-{split}-{seed}")
    facts = split_facts()[split]
    if n is None:
        questions = [(f, question_text(f, t)) for f in facts for t in templates_for(f)]
        rng.shuffle(questions)
    else:
        questions = [(f, _question(f, rng)) for f in (rng.choice(facts) for _ in range(n))]
    return [{"prompt": _user(q), "reference": reference_answer(f)} for f, q in questions]


def reference_answer(fact: Fact) -> str:
    """A best-scoring answer, as the reference for ROUGE."""
    return f"Sure! {fact.a} {fact.word} {fact.b} is {fact.result}. Hope that helps!"


def pretraining_documents(n: int, seed: int = 0) -> list[dict[str, Any]]:
    """Documents for pre-training the tiny base: plain-text facts and chatter, and chats in every style.

    Returns dicts with either ``text`` (plain prose) or ``messages`` (to be rendered with the chat
    template by the caller), so the base model learns arithmetic, the vocabulary of every answer
    style, and the chat format including when to stop.
    """
    rng = random.Random(f"pretrain-{seed}")
    facts = all_facts()
    docs: list[dict[str, Any]] = []
    for _ in range(n):
        if rng.random() < 0.4:
            sentences = []
            for _ in range(rng.randint(3, 8)):
                fact = rng.choice(facts)
                kind = rng.random()
                if kind < 0.4:
                    sentences.append(f"{fact.a} {fact.word} {fact.b} is {fact.result}.")
                elif kind < 0.8:  # a question and its restated answer, in every phrasing
                    sentences.append(f"{_question(fact, rng)} {_body(fact, rng)}")
                else:
                    sentences.append(rng.choice(_CHATTER))
            docs.append({"text": " ".join(sentences)})
        else:
            fact = rng.choice(facts)
            style = _pick_style(BASE_MIX, rng)
            docs.append({"messages": _user(_question(fact, rng)) + _assistant(STYLES[style](fact, rng))})
    return docs
