"""Real-text prompt set: wiki markup cleaning, .deb reading, and the prompt families' shapes.

The sources themselves are downloads (tokenleap.train.corpora); these tests build small
stand-ins of the same form, so they run offline."""

import io
import tarfile
from pathlib import Path

import pytest

from tokenleap import TokenleapError
from tokenleap.train.corpora import clean_wikitext, read_deb
from tokenleap.train.prompts import corpus_prompts, is_disjoint

SPEC_BENCH = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "spec_bench_dev.jsonl"


def test_wikitext_keeps_prose_and_drops_markup():
    text = ("{{Infobox|name=X|{{nested|a}}}}\n'''Asphalt''' ({{IPA|x}}, {{IPA|y}}) is a [[petroleum|sticky]] black "
            "[[liquid]]<ref>Smith 2001</ref> used on roads since the [[19th century]], as the article on "
            "[https://example.org road building] explains at some length, with more words here so that the paragraph is long enough to count as prose.\n\n"
            "== History ==\n* a list item that is dropped\n[[File:Road.jpg|thumb|A [[road]]]]\n"
            "{| class=wikitable\n| cell || cell\n|}\nshort line")
    (para,) = clean_wikitext(text)
    assert para.startswith("Asphalt is a sticky black liquid used on roads since the 19th century, as the article on "
                           "road building explains")
    assert not any(c in para for c in "{}[]<>|=") and "Smith" not in para and "'''" not in para


def _ar_member(name: str, data: bytes) -> bytes:
    header = f"{name:<16}{0:<12}{0:<6}{0:<6}{'100644':<8}{len(data):<10}`\n".encode()
    return header + data + (b"\n" if len(data) % 2 else b"")


def test_read_deb_takes_files_under_a_prefix_from_the_data_tarball():
    tar_bytes = io.BytesIO()
    with tarfile.open(fileobj=tar_bytes, mode="w:xz") as tar:
        for name, body in [("./usr/share/games/fortunes/de/zitate", b"Eins.\n%\nZwei."), ("./usr/bin/x", b"no")]:
            info = tarfile.TarInfo(name)
            info.size = len(body)
            tar.addfile(info, io.BytesIO(body))
    blob = b"!<arch>\n" + _ar_member("debian-binary", b"2.0\n") + _ar_member("control.tar.xz", b"abc") \
        + _ar_member("data.tar.xz", tar_bytes.getvalue())
    files = read_deb(blob, "usr/share/games/fortunes/de/")
    assert list(files.values()) == [b"Eins.\n%\nZwei."]
    with pytest.raises(TokenleapError, match="not a Debian package"):
        read_deb(b"PK\x03\x04", "usr/")


@pytest.fixture(scope="module")
def sources():
    words = [f"word{i}" for i in range(3000)]
    articles = [{"title": f"Topic {a}", "paragraphs": [" ".join(f"w{a}.{p}.{k}" for k in range(100)) for p in range(30)]}
                for a in range(40)]
    return {"articles": articles, "entities": [f"Entity {i}" for i in range(2000)],
            "news": [f"News story {i}. " + " ".join(words[i:i + 200]) for i in range(30)],
            "german": [f"Das ist der deutsche Satz Nummer {i}, sagte er." for i in range(2000)]}


def test_corpus_prompts_are_deterministic_distinct_and_in_spec_bench_proportions(sources):
    prompts = corpus_prompts(600, seed=2, sources=sources)
    assert prompts == corpus_prompts(600, seed=2, sources=sources) != corpus_prompts(600, seed=3, sources=sources)
    assert len(set(prompts)) == 600
    translation = [p for p in prompts if p.startswith("Translate German to English: Das ist")]
    summaries = [p for p in prompts if p.startswith("Summarize: ")]
    rag = [p for p in prompts if p.startswith("Topic ") and "\n" in p]
    for family in (translation, summaries, rag):
        assert 85 <= len(family) <= 115  # a sixth each
    # RAG: up to 520 words of an article after its title (fewer only when the passage starts
    # near the article's end), then one question line.
    lengths = []
    for p in rag:
        body, question = p.rsplit("\n", 1)
        lengths.append(len(body.split()) - 2)
        assert question.rstrip("?.") and question[0].isupper() and "\n" not in body
    assert max(lengths) <= 520 and sum(n >= 480 for n in lengths) >= 0.5 * len(lengths)
    assert any(p.startswith("News story") for s in summaries for p in [s.removeprefix("Summarize: ")])
    assert any(" ." in p for p in translation) and any(p.endswith("er.") for p in translation)
    assert is_disjoint(prompts, SPEC_BENCH)


def test_corpus_prompts_say_when_the_sources_run_short(sources):
    small = {**sources, "german": sources["german"][:10]}
    with pytest.raises(ValueError, match="distinct corpus prompts"):
        corpus_prompts(600, sources=small)
