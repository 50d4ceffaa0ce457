"""The biography generator: power-law exposures, determinism, QA answers consistent with the bios."""

import re
from collections import Counter

import pytest

from data.bios import (
    ATTRIBUTES,
    CITIES,
    COMPANIES,
    MAJORS,
    TEMPLATES,
    UNIVERSITIES,
    BiosConfig,
    documents,
    group_exposures,
    heldout_documents,
    people,
    qa_items,
)

SMALL = BiosConfig(n_people=60, n_groups=4, alpha=1.0, max_exposures=12, min_exposures=2, seed=3)


def test_group_exposures_follow_the_power_law():
    assert group_exposures(BiosConfig()) == [64, 23, 12, 8, 6, 4, 3, 3]  # 64 * (j+1)^-1.5, rounded
    assert group_exposures(BiosConfig(n_groups=5, alpha=1.0, max_exposures=30)) == [30, 15, 10, 8, 6]
    # the floor: 10 * (j+1)^-3 = 10, 1.25, 0.37, 0.16
    floored = BiosConfig(n_groups=4, alpha=3.0, max_exposures=10, min_exposures=2)
    assert group_exposures(floored) == [10, 2, 2, 2]


def _person_of(doc: str, names: set[str]) -> str:
    found = {m for m in re.findall(r"[A-Z][a-z]+ [A-Z][a-z]+", doc) if m in names}
    assert len(found) == 1, doc
    return found.pop()


def test_every_person_appears_as_often_as_its_group_says():
    everyone = {p.name: p for p in people(SMALL)}
    assert Counter(p.group for p in everyone.values()) == {0: 15, 1: 15, 2: 15, 3: 15}
    exposures = group_exposures(SMALL)  # [12, 6, 4, 3]
    bios, qas = Counter(), Counter()
    for doc in documents(SMALL):
        (qas if doc.startswith("Question:") else bios)[_person_of(doc, set(everyone))] += 1
    for name, p in everyone.items():
        assert bios[name] == exposures[p.group]
        assert qas[name] == exposures[p.group]
    assert not any(d.startswith("Question:") for d in documents(BiosConfig(n_people=8, n_groups=2,
                                                                          qa_in_train=False)))


def test_heldout_biographies_cover_everyone_and_are_never_trained_on():
    everyone = {p.name for p in people(SMALL)}
    assert list(heldout_documents(SMALL)) == []  # the default: no validation split
    cfg = BiosConfig(**{**SMALL.__dict__, "heldout": 2})
    heldout = list(heldout_documents(cfg))
    assert Counter(_person_of(doc, everyone) for doc in heldout) == {name: 2 for name in everyone}
    assert not set(heldout) & set(documents(cfg))
    assert list(documents(cfg)) == list(documents(SMALL))  # the training documents do not change
    assert heldout == list(heldout_documents(cfg))
    assert heldout != list(heldout_documents(BiosConfig(**{**cfg.__dict__, "seed": 4})))


def test_uneven_groups_differ_by_at_most_one():
    sizes = Counter(p.group for p in people(BiosConfig(n_people=10, n_groups=4)))
    assert [sizes[j] for j in range(4)] == [3, 3, 2, 2]


def test_deterministic_by_seed():
    assert list(documents(SMALL)) == list(documents(SMALL))
    assert qa_items(SMALL) == qa_items(SMALL)
    other = BiosConfig(**{**SMALL.__dict__, "seed": 4})
    assert list(documents(other)) != list(documents(SMALL))
    assert [p.name for p in people(other)] != [p.name for p in people(SMALL)]


def _sentence_patterns(name: str) -> dict[str, list[re.Pattern]]:
    return {attr: [re.compile(re.escape(t).replace(re.escape("{name}"), re.escape(name))
                              .replace(re.escape("{value}"), "(?P<value>.+)")) for t in templates]
            for attr, templates in TEMPLATES.items()}


def test_qa_answers_agree_with_the_biographies():
    everyone = {p.name: p for p in people(SMALL)}
    answers = {(it.person, it.attribute): it.answer for it in qa_items(SMALL)}
    prompts = {(it.person, it.attribute): it.prompt for it in qa_items(SMALL)}
    for doc in documents(SMALL):
        person = everyone[_person_of(doc, set(everyone))]
        if doc.startswith("Question:"):
            # a QA document is the six prompt + answer + "." lines
            expected = {prompts[person.id, a] + answers[person.id, a] + "." for a in ATTRIBUTES}
            assert set(doc.split("\n")) == expected
            continue
        sentences = re.split(r"(?<=\.) (?=\S)", doc)
        assert len(sentences) == 6
        patterns = _sentence_patterns(person.name)
        seen = set()
        for sentence in sentences:
            hits = [(attr, m.group("value")) for attr, pats in patterns.items() for p in pats
                    if (m := p.fullmatch(sentence))]
            attr, value = hits[0]
            assert all(h == hits[0] for h in hits), sentence
            assert " " + value == answers[person.id, attr]
            seen.add(attr)
        assert seen == set(ATTRIBUTES)


def test_qa_items_shape():
    items = qa_items(SMALL)
    assert len(items) == 6 * SMALL.n_people
    assert all(it.prompt.endswith("Answer:") and it.answer.startswith(" ") for it in items)
    assert [it.group for it in items] == sorted(it.group for it in items)  # group 0 first


def test_attribute_values_are_distinct():
    for values in (CITIES, UNIVERSITIES, MAJORS, COMPANIES):
        first_words = [v.split()[0] for v in values]
        assert len(set(first_words)) == len(values)  # the first word of an answer identifies it
    everyone = people(BiosConfig(n_people=2000))
    assert len({p.name for p in everyone}) == 2000
    # attributes are drawn independently: no value dominates
    for attr in ("birth_city", "university", "major", "employer"):
        top = Counter(p.attributes[attr] for p in everyone).most_common(1)[0][1]
        assert top < 0.05 * len(everyone), attr
    # 18480 possible dates: ~1895 distinct expected among 2000 people (birthday problem)
    assert len({p.attributes["birth_date"] for p in everyone}) > 1800


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"n_people": 3, "n_groups": 4}, "n_groups"),
        ({"alpha": -1.0}, "alpha"),
        ({"min_exposures": 5, "max_exposures": 4}, "min_exposures"),
        ({"n_templates": 7}, "n_templates"),
        ({"qa_in_train": "yes"}, "qa_in_train"),
        ({"heldout": -1}, "heldout"),
        ({"n_people": 10**7}, "distinct names"),
    ],
)
def test_bad_config_raises(kwargs, match):
    with pytest.raises(ValueError, match=match):
        BiosConfig(**kwargs)


def test_cli_prints_the_group_table(capsys):
    from data.bios import main

    assert main(["n_people=16", "n_groups=2", "alpha=1.0", "max_exposures=8", "qa_in_train=false"]) == 0
    out = capsys.readouterr().out
    assert "96 documents" in out  # 8 people x 8 biographies + 8 people x 4 (no QA documents)
    with pytest.raises(SystemExit, match="bad argument"):
        main(["people=3"])
    with pytest.raises(SystemExit, match="n_groups"):
        main(["n_groups=0"])
