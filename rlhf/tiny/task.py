"""The built-in tiny task: a small arithmetic helper that a person can grade at a glance.

Why this task. Every stage of the toolkit has to show real learning on two CPU cores in minutes,
with nothing downloaded. So the task must be (1) learnable by a ~3M-parameter model, (2) judged
objectively by a few lines of Python that a person would agree with, and (3) shaped so that each
stage has something to do:

* the **base** model (pre-trained by ``scripts/build_tiny_model.py``) knows the language and the
  chat format, and answers in every style with equal probability;
* the **SFT** demonstrations are of mixed quality (about a third are wrong, rude, rambling or
  off-topic), so the SFT policy is better than the base but leaves clear room to improve;
* the **reward** pairs need both style (polite, ends properly) and correctness to be ranked: a
  third of them differ only in that one answer misread the question ("3 plus 5 is 8." to "What
  is 3 plus 4?"), so a reward model that reads style alone cannot score well, and reward hacking
  shows up as a gap between reward-model score and gold score. Wrong answers misread the question
  rather than slip in arithmetic because checking a sum is beyond a tiny model trained for
  minutes (measured: a 0.7M base judged "a plus b is c" claims at chance), while comparing an
  answer with its question is the kind of matching small transformers learn quickly;
* **PPO** prompts and **held-out** evaluation prompts come from disjoint arithmetic facts, so the
  evaluation measures generalisation, not memorised prompts.

The gold judge (:func:`score`) stands in for a human annotator. Its rules, in the order a person
would apply them:

=================================================  ==========================
rule                                               points
=================================================  ==========================
restates the question as asked and states the      +1 (otherwise: -1)
right result ("3 plus 4 is 7." to "3 plus 4?")
friendly (a polite phrase and nothing rude)        +0.5
rude phrase                                        -1
does not end with ``.``, ``!`` or ``?`` (cut off)  -0.5
repeats a sentence                                 -0.5
an answer with a stray sentence beside it, one     -0.5
that neither answers nor is a courtesy ("Of!")
longer than 20 words                               -0.1 per extra word (max -1)
=================================================  ==========================

The best possible score is 1.5 ("Sure! 3 plus 4 is 7. Hope that helps!"). A person reads the
whole answer: "Of! 0 plus 1 equals 1. Hope that helps!" is not a perfect answer and "plus 1
equals 1." does not say what it answers, so the judge checks every sentence, not only the number.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

MAX_OPERAND = 9
HELD_OUT_FRACTION = 0.15
MAX_WORDS = 20
BEST_SCORE = 1.5

# Questions. The result is always x + y or x - y, whatever order the phrasing reads them in
# ("take {y} away from {x}" is x - y).
_PLUS_TEMPLATES = (
    "What is {x} plus {y}?",
    "How much is {x} plus {y}?",
    "Can you add {x} and {y}?",
    "Please tell me {x} plus {y}.",
    "What do you get when you add {x} and {y}?",
    "Add {x} and {y}, please.",
)
_MINUS_TEMPLATES = (
    "What is {x} minus {y}?",
    "How much is {x} minus {y}?",
    "Please tell me {x} minus {y}.",
    "Can you take {y} away from {x}?",
    "What is left when you take {y} from {x}?",
)

POLITE_PHRASES = (
    "sure",
    "of course",
    "happy to help",
    "good question",
    "glad you asked",
    "hope that helps",
    "thanks for asking",
    "you are welcome",
)
RUDE_PHRASES = (
    "ugh",
    "obviously",
    "whatever",
    "stop asking",
    "figure it out",
    "boring",
    "silly question",
)

_POLITE_OPENERS = ("Sure!", "Of course!", "Happy to help!", "Good question!", "Glad you asked!")
_POLITE_CLOSERS = ("", "", "Hope that helps!", "Thanks for asking!", "You are welcome!")
_RUDE_OPENERS = ("Ugh.", "Whatever.", "Silly question.", "Obviously, come on.")
_RUDE_CLOSERS = ("", "Stop asking.", "Figure it out yourself.", "That was boring.")
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


@dataclass(frozen=True)
class Fact:
    """One arithmetic fact, ``a op b``, with ``op`` in ``{"+", "-"}`` and a non-negative result."""

    a: int
    b: int
    op: str

    @property
    def result(self) -> int:
        return self.a + self.b if self.op == "+" else self.a - self.b

    @property
    def word(self) -> str:
        return "plus" if self.op == "+" else "minus"


@dataclass(frozen=True)
class Judgement:
    """The gold judge's verdict, rule by rule, so reports can say *why* a response scored as it did."""

    correct: bool
    answered: bool
    polite: bool
    rude: bool
    ended: bool
    repeated: bool
    stray: bool  # a sentence beside the answer that neither answers nor is a courtesy ("Of!", "16.")
    words: int
    score: float


def all_facts() -> list[Fact]:
    """Every fact of the task: ``a + b`` and ``a - b`` (``a >= b``) for operands 0..9."""
    facts = [Fact(a, b, "+") for a in range(MAX_OPERAND + 1) for b in range(MAX_OPERAND + 1)]
    facts += [Fact(a, b, "-") for a in range(MAX_OPERAND + 1) for b in range(a + 1)]
    return facts


def split_facts() -> dict[str, list[Fact]]:
    """Deterministic split of the facts: ``train`` for SFT/reward/PPO, ``test`` held out for evaluation.

    The base model sees every fact during pre-training (that is its world knowledge); the alignment
    stages never see a held-out fact, so evaluation on them measures whether the learnt *behaviour*
    generalises to new prompts.
    """
    facts = all_facts()
    rng = random.Random(1234)
    held_out = set(rng.sample(range(len(facts)), round(HELD_OUT_FRACTION * len(facts))))
    return {
        "train": [f for i, f in enumerate(facts) if i not in held_out],
        "test": [f for i, f in enumerate(facts) if i in held_out],
    }


def question_text(fact: Fact, template: str) -> str:
    return template.format(x=fact.a, y=fact.b)


def templates_for(fact: Fact) -> tuple[str, ...]:
    return _PLUS_TEMPLATES if fact.op == "+" else _MINUS_TEMPLATES


def _template_regex(template: str) -> re.Pattern[str]:
    pattern = re.escape(template).replace(r"\{x\}", r"(?P<x>\d+)").replace(r"\{y\}", r"(?P<y>\d+)")
    return re.compile(rf"^\s*{pattern}\s*$", re.IGNORECASE)


_QUESTION_PATTERNS = [(_template_regex(t), "+") for t in _PLUS_TEMPLATES] + [
    (_template_regex(t), "-") for t in _MINUS_TEMPLATES
]


def parse_question(prompt: str) -> Fact | None:
    """The fact a prompt asks about, or ``None`` when the prompt is not one of the task's questions."""
    for pattern, op in _QUESTION_PATTERNS:
        match = pattern.match(prompt)
        if match:
            return Fact(int(match["x"]), int(match["y"]), op)
    return None


_CLAIM = re.compile(r"\b(?:is|equals|makes)\s+(-?\d+)\b|=\s*(-?\d+)", re.IGNORECASE)
# A whole answer sentence: the question restated, then the result ("3 plus 4 is 7.")
_ANSWER = re.compile(r"^(\d+) (plus|minus) (\d+) (?:is|equals|makes) (-?\d+)$")


def _letters(sentence: str) -> str:
    return re.sub(r"[^a-z ]", "", sentence.lower()).strip()


# sentences that only carry tone: the phrases alone, and the openers and closers people use
_COURTESIES = {
    _letters(s)
    for s in (*POLITE_PHRASES, *RUDE_PHRASES, *_POLITE_OPENERS, *_POLITE_CLOSERS, *_RUDE_OPENERS, *_RUDE_CLOSERS)
} - {""}
_BARE_NUMBER = re.compile(r"^\s*(-?\d+)\s*[.!]?\s*$")
_SENTENCE_SPLIT = re.compile(r"(?<=[.!?])\s+")


def claimed_answer(response: str) -> int | None:
    """The result a response states: the first number after "is"/"equals"/"makes"/"=", or a bare number."""
    match = _CLAIM.search(response)
    if match:
        return int(match.group(1) or match.group(2))
    match = _BARE_NUMBER.match(response)
    return int(match.group(1)) if match else None


def _has_phrase(text: str, phrases: Sequence[str]) -> bool:
    lowered = text.lower()
    return any(re.search(rf"\b{re.escape(p)}\b", lowered) for p in phrases)


def _prompt_text(prompt: str | list[dict[str, Any]]) -> str:
    if isinstance(prompt, str):
        return prompt
    users = [m["content"] for m in prompt if m.get("role") == "user"]
    return users[-1] if users else ""


def judge(prompt: str | list[dict[str, Any]], response: str) -> Judgement:
    """Apply the gold rules (see the module docstring) and return the verdict with its parts.

    ``prompt`` is the user's question, as text or as a list of chat messages (the last user
    message is the question). ``response`` is the assistant's text without special tokens.
    """
    fact = parse_question(_prompt_text(prompt))
    claim = claimed_answer(response)
    rude = _has_phrase(response, RUDE_PHRASES)
    polite = not rude and _has_phrase(response, POLITE_PHRASES)
    text = response.strip()
    ended = bool(text) and text[-1] in ".!?"
    sentences = [s.strip().lower() for s in _SENTENCE_SPLIT.split(text) if s.strip()]
    repeated = len(sentences) != len(set(sentences))
    words = len(text.split())
    # every finished sentence either answers (restating a question) or is a courtesy; a cut-off last
    # sentence is the "cut off" rule's, not a stray one
    finished = [s.rstrip(".!?").strip() for s in (sentences if ended else sentences[:-1])]
    attempt = next((s for s in finished if claimed_answer(s) is not None), None)  # the sentence that answers
    stray = attempt is not None and any(
        s != attempt and not _ANSWER.match(s) and _letters(s) not in _COURTESIES for s in finished
    )
    answer = _ANSWER.match(attempt or "")
    correct = (
        fact is not None
        and answer is not None
        and (int(answer[1]), answer[2], int(answer[3]), int(answer[4])) == (fact.a, fact.word, fact.b, fact.result)
    )

    points = 1.0 if correct else -1.0
    points += 0.5 if polite else 0.0
    points -= 1.0 if rude else 0.0
    points -= 0.0 if ended else 0.5
    points -= 0.5 if repeated else 0.0
    points -= 0.5 if stray else 0.0
    points -= min(1.0, 0.1 * max(0, words - MAX_WORDS))
    return Judgement(
        correct=correct,
        answered=claim is not None,
        polite=polite,
        rude=rude,
        ended=ended,
        repeated=repeated,
        stray=stray,
        words=words,
        score=round(points, 4),
    )


def score(prompt: str | list[dict[str, Any]], response: str) -> float:
    """The gold judge: a float in [-3.5, 1.5]; higher is what a person would prefer."""
    return judge(prompt, response).score


def gold_reward(prompts: list[Any], completions: list[Any], **kwargs: Any) -> list[float]:
    """The gold judge as a rule reward, in TRL's ``reward_funcs`` form (``rlhf.tiny.task:gold_reward``).

    A run trained on it is judged by what it optimised: its ``judge`` attribute lets the PPO stage
    and the report say so.
    """
    return [score(p, c if isinstance(c, str) else c[-1]["content"]) for p, c in zip(prompts, completions, strict=True)]


gold_reward.judge = score  # type: ignore[attr-defined]


# ----------------------------------------------------------------------------------------------
# Response styles. Each takes the fact and an RNG and returns the assistant's text.


def misread(fact: Fact, rng: random.Random) -> Fact:
    """The fact a careless reader answers instead: one operand off by 1-3 (the result then differs too)."""
    while True:
        delta = rng.choice((-3, -2, -1, 1, 2, 3))
        a, b = (fact.a + delta, fact.b) if rng.random() < 0.5 else (fact.a, fact.b + delta)
        if 0 <= a <= MAX_OPERAND and 0 <= b <= MAX_OPERAND and (fact.op == "+" or a >= b):
            return Fact(a, b, fact.op)


def _body(fact: Fact, rng: random.Random) -> str:
    return rng.choice(_BODIES).format(x=fact.a, y=fact.b, word=fact.word, r=fact.result)


def _helpful_about(fact: Fact, rng: random.Random) -> str:
    parts = (rng.choice(_POLITE_OPENERS), _body(fact, rng), rng.choice(_POLITE_CLOSERS))
    return " ".join(p for p in parts if p)


def helpful(fact: Fact, rng: random.Random) -> str:
    return _helpful_about(fact, rng)


def terse(fact: Fact, rng: random.Random) -> str:
    return _body(fact, rng)


def rude(fact: Fact, rng: random.Random) -> str:
    parts = (rng.choice(_RUDE_OPENERS), _body(fact, rng), rng.choice(_RUDE_CLOSERS))
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
    return f"{rng.choice(_POLITE_OPENERS)} {repeats} {cut}"


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
    opener, template, closer = rng.choice(_POLITE_OPENERS), rng.choice(_BODIES), rng.choice(_POLITE_CLOSERS)

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
