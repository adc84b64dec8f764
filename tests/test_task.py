"""The built-in task's gold judge and data: the rules a person would apply, checked one by one."""

from __future__ import annotations

import pytest

from rlhf.tiny import corpus, task


@pytest.mark.parametrize(
    ("response", "expected"),
    [
        ("Sure! 3 plus 4 is 7. Hope that helps!", 1.5),  # right, friendly, ends properly
        ("3 plus 4 is 7.", 1.0),  # right but curt
        ("3 plus 5 is 8.", -1.0),  # answers a misread question
        ("Sure! 3 plus 5 is 8.", -0.5),  # wrong but friendly
        ("Ugh. 3 plus 4 is 7. Stop asking.", 0.0),  # right but rude
        ("I like cats.", -1.0),  # no answer
        ("Sure! 3 plus 4 is 7. 3 plus 4 is 7. 3 plus 4 is", 0.5),  # repeats itself and is cut off
        ("", -1.5),  # nothing at all
        # what a person would not give full marks (PPO found these in the old judge's blind spots):
        ("Of! 3 plus 4 equals 7. Hope that helps!", 1.0),  # a stray fragment beside a right answer
        ("Sure! 3 plus 4 is 7. 16. Thanks for asking!", 1.0),  # a stray number
        ("Let us talk for small children. plus 4 equals 7. Thanks for asking!", -1.0),  # does not say what it answers
        ("Sure! It is 7.", -0.5),  # the right number, but the question is not restated
        ("7.", -1.0),  # the number alone does not say what it answers
        ("Sure! 4 plus 3 is 7.", -0.5),  # restates another question (operands swapped)
        ("Sure! 3 minus 4 is 7.", -0.5),  # restates another operation
        ("Obviously, come on. 3 plus 4 is 7.", 0.0),  # rude openers are tone, not stray sentences
        ("Numbers are hard. I like cats.", -1.0),  # no answer at all: nothing to be stray beside
    ],
)
def test_gold_judge_rules(response: str, expected: float) -> None:
    assert task.score("What is 3 plus 4?", response) == pytest.approx(expected)


def test_length_penalty_and_chat_prompt() -> None:
    long = "Sure! 3 plus 4 is 7. Counting is a thing I love doing every single day with my friends at home."
    judgement = task.judge([{"role": "user", "content": "What is 3 plus 4?"}], long)
    assert judgement.correct and judgement.polite and judgement.words > task.MAX_WORDS
    assert judgement.stray  # the chatter beside the answer is a stray sentence too
    assert judgement.score == pytest.approx(1.5 - 0.5 - 0.1 * (judgement.words - task.MAX_WORDS))


@pytest.mark.parametrize("fact", task.all_facts()[::7])
def test_every_phrasing_parses_back_to_its_fact(fact: task.Fact) -> None:
    for template in task.templates_for(fact):
        assert task.parse_question(task.question_text(fact, template)) == fact


def test_unknown_prompt_has_no_right_answer() -> None:
    assert task.parse_question("Tell me a story.") is None
    assert task.judge("Tell me a story.", "Sure! It is 7.").correct is False


def test_splits_are_disjoint_and_deterministic() -> None:
    splits = task.split_facts()
    assert set(splits["train"]).isdisjoint(splits["test"])
    assert len(splits["train"]) + len(splits["test"]) == len(task.all_facts())
    assert corpus.sft_rows(20) == corpus.sft_rows(20)
    held_out = {task.parse_question(r["prompt"][0]["content"]) for r in corpus.prompt_rows(split="test")}
    assert held_out == set(splits["test"])


def test_preference_pairs_are_ranked_by_the_judge_and_include_number_only_pairs() -> None:
    rows = corpus.preference_rows(300)
    number_only = 0
    for row in rows:
        prompt = row["prompt"][0]["content"]
        chosen, rejected = row["chosen"][0]["content"], row["rejected"][0]["content"]
        assert task.score(prompt, chosen) >= task.score(prompt, rejected) + 0.25
        a, b = task.judge(prompt, chosen), task.judge(prompt, rejected)
        number_only += a.polite == b.polite and a.ended == b.ended and not b.rude and a.correct != b.correct
    assert number_only > 0.25 * len(rows)


def test_sft_demonstrations_leave_room_to_improve() -> None:
    rows = corpus.sft_rows(1000)
    mean = sum(task.score(r["messages"][0]["content"], r["messages"][1]["content"]) for r in rows) / len(rows)
    assert 0.2 < mean < task.BEST_SCORE - 0.7


def test_sft_demonstrations_are_mixed_wrong_rude_rambling_and_off_topic() -> None:
    """The judge finds each kind of flaw among the demonstrations, in nearly half of them together
    (SFT_MIX: 15% wrong, 12% rude, 9% rambling, 9% off-topic; 44% measured on these 1000)."""
    judged = [task.judge(r["messages"][0]["content"], r["messages"][1]["content"]) for r in corpus.sft_rows(1000)]
    kinds = {
        "wrong": sum(j.answered and not j.correct for j in judged),
        "off-topic": sum(not j.answered for j in judged),
        "rude": sum(j.rude for j in judged),
        "rambling": sum(j.words > task.MAX_WORDS for j in judged),
    }
    assert all(count >= 40 for count in kinds.values()), kinds
    flawed = sum(not j.correct or j.rude or j.words > task.MAX_WORDS for j in judged)
    assert 0.35 < flawed / len(judged) < 0.55, flawed
