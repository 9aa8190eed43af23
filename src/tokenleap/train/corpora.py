"""Real text for training prompts, taken from packages on the registries this project reaches.

Templates alone made the draft memorise its prompts (0.69 agreement on held-out sequences of
the same templates, 0.31 on Spec-Bench dev answers), so the prompt set built from this module
carries real prose instead. None of it is Spec-Bench text (`prompts.is_disjoint` checks):

- English Wikipedia: ~100 full articles in gensim's test data (PyPI wheel `gensim`), markup
  stripped here; their link targets double as a list of named entities.
- English news: the Lee corpus, 300 ABC news articles, also in gensim's test data.
- German: ~30k quotations, jokes and sayings of the Debian package `fortunes-de`.

Each source is downloaded once (`pip download`, `apt-get download`) and cached as plain text
under the tokenleap cache."""

from __future__ import annotations

import bz2
import functools
import io
import json
import re
import subprocess
import sys
import tarfile
import tempfile
import xml.etree.ElementTree as ET
import zipfile
from pathlib import Path

from ..errors import TokenleapError
from ..models.registry import cache_home

GENSIM = "gensim==4.4.0"
WIKI_MEMBER = "gensim/test/test_data/enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
LEE_MEMBER = "gensim/test/test_data/lee_background.cor"


def corpus_dir() -> Path:
    path = cache_home() / "corpora"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _run(cmd: list[str], cwd: str) -> None:
    try:
        subprocess.run(cmd, cwd=cwd, check=True, capture_output=True, text=True)
    except (OSError, subprocess.CalledProcessError) as exc:
        detail = getattr(exc, "stderr", "") or str(exc)
        raise TokenleapError(f"cannot fetch training text with `{' '.join(cmd)}`: "
                             f"{detail.strip().splitlines()[-1] if detail.strip() else exc}") from None


@functools.lru_cache(maxsize=1)  # Wikipedia and news both come from it: one download
def _gensim_members() -> dict[str, bytes]:
    """The two test-data files of the gensim wheel (downloaded once, without installing it)."""
    with tempfile.TemporaryDirectory() as tmp:
        _run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:", "-q", "-d", tmp,
              GENSIM], tmp)
        wheel = next(Path(tmp).glob("gensim-*.whl"))
        with zipfile.ZipFile(wheel) as z:
            return {name: z.read(name) for name in (WIKI_MEMBER, LEE_MEMBER)}


def _deb_files(package: str, prefix: str) -> dict[str, bytes]:
    """Files under `prefix` in a Debian package (`apt-get download`)."""
    with tempfile.TemporaryDirectory() as tmp:
        _run(["apt-get", "download", package], tmp)
        return read_deb(next(Path(tmp).glob(f"{package}_*.deb")).read_bytes(), prefix)


def read_deb(blob: bytes, prefix: str) -> dict[str, bytes]:
    """Files under `prefix` in a .deb: an ar archive whose data.tar.* member holds the files."""
    if not blob.startswith(b"!<arch>\n"):
        raise TokenleapError("not a Debian package (no ar header)")
    pos, files = 8, {}  # skip "!<arch>\n"; each member: 60-byte header, data padded to even size
    while pos < len(blob):
        name, size = blob[pos:pos + 16].decode().strip(), int(blob[pos + 48:pos + 58])
        data = blob[pos + 60:pos + 60 + size]
        pos += 60 + size + size % 2
        if name.startswith("data.tar"):
            with tarfile.open(fileobj=io.BytesIO(data)) as tar:
                for m in tar.getmembers():
                    if m.isfile() and m.name.lstrip("./").startswith(prefix):
                        files[m.name] = tar.extractfile(m).read()
    return files


def _cached(name: str, build) -> list:
    path = corpus_dir() / name
    if not path.is_file():
        path.write_text(json.dumps(build()))
    return json.loads(path.read_text())


# -- Wikipedia markup ------------------------------------------------------------------------
_LINK = re.compile(r"\[\[([^\[\]|]*\|)?([^\[\]]*)\]\]")
_ENTITY = re.compile(r"\[\[([^\[\]|#:]{3,60})(?:\|[^\[\]]*)?\]\]")


def _innermost(pattern: str, text: str, repl: str = "") -> str:
    """Apply a regex until nothing changes (for nested {{templates}} and tables)."""
    rx = re.compile(pattern, re.S)
    while True:
        text, n = rx.subn(repl, text)
        if not n:
            return text


def clean_wikitext(text: str) -> list[str]:
    """Prose paragraphs of a wiki article: templates, tables, references, files, lists and
    headings dropped, links reduced to their text."""
    text = re.sub(r"<!--.*?-->", "", text, flags=re.S)
    text = re.sub(r"<ref[^>/]*/>|<ref[^>]*>.*?</ref>", "", text, flags=re.S)
    text = _innermost(r"\{\{[^{}]*\}\}", text)
    text = _innermost(r"\{\|[^{}]*?\|\}", text)
    text = _innermost(r"\[\[(?:File|Image|Category|[a-z]{2,3}):[^\[\]]*\]\]", text)
    text = _innermost(_LINK.pattern, text, r"\2")
    text = re.sub(r"\[https?://\S+ ([^\]]*)\]|\[https?://\S+\]", r"\1", text)
    text = re.sub(r"<[^>]+>", "", text).replace("'''", "").replace("''", "")
    text = re.sub(r"\(\s*(?:[,;]\s*)+\)|(?<=\()\s*(?:[,;]\s*)+", "", text)  # "( , , )" left by removed templates
    paragraphs = []
    for block in re.split(r"\n\s*\n|\n=+[^\n]*=+\s*\n", text):
        lines = [ln for ln in block.splitlines() if ln.strip() and not ln.lstrip().startswith(("*", "#", ":", ";", "|", "!", "{", "}"))]
        para = " ".join(" ".join(lines).split())
        if len(para) >= 200 and sum(c.isalpha() for c in para) > 0.75 * len(para):
            paragraphs.append(para)
    return paragraphs


def _wikipedia() -> dict:
    raw = _gensim_members()[WIKI_MEMBER]
    articles, entities = [], set()
    for _, el in ET.iterparse(io.BytesIO(bz2.decompress(raw))):
        if el.tag.rsplit("}", 1)[-1] != "page":
            continue
        title, text = el.findtext(".//{*}title") or "", el.findtext(".//{*}text") or ""
        el.clear()
        if text.lstrip().upper().startswith("#REDIRECT") or ":" in title:
            continue
        entities.update(m.strip() for m in _ENTITY.findall(text) if not m[0].islower())
        paragraphs = clean_wikitext(text)
        if paragraphs:
            articles.append({"title": title, "paragraphs": paragraphs})
    return {"articles": articles, "entities": sorted(entities)}


def wikipedia() -> dict:
    """{"articles": [{"title", "paragraphs"}], "entities": [link targets]}."""
    return _cached("wikipedia.json", _wikipedia)


def news() -> list[str]:
    """The Lee corpus: 300 short news articles, one per line in the file."""
    return _cached("lee_news.json", lambda: [ln.strip() for ln in _gensim_members()[LEE_MEMBER].decode().splitlines()
                                             if len(ln.split()) > 40])


def _german() -> list[str]:
    out = []
    for name, data in sorted(_deb_files("fortunes-de", "usr/share/games/fortunes/de/").items()):
        if name.endswith(".dat") or "asciiart" in name:
            continue
        for block in data.decode("utf-8", "replace").split("\n%\n"):
            text = " ".join(block.split())
            text = re.sub(r"\s+--\s+[^-]{2,80}$", "", text)  # drop the "-- Author (source)" attribution
            if 30 <= len(text) <= 300 and not re.search(r"[<>|_\\/=#@*]{2,}|\ufffd", text):
                out.append(text)
    return sorted(set(out))


def german_sentences() -> list[str]:
    """German quotations, jokes and sayings (fortunes-de), 30-300 characters each."""
    return _cached("german.json", _german)


def load_all() -> dict:
    """Every source, in the form `prompts.corpus_prompts` takes."""
    wiki = wikipedia()
    return {"articles": wiki["articles"], "entities": wiki["entities"], "news": news(),
            "german": german_sentences()}
