"""The public API: streaming, stop strings, statistics and clear errors for bad input."""

import pytest

import tokenleap
from tokenleap import TokenleapError


def test_stream_pieces_join_to_the_final_text(tiny):
    model = tiny(vocab_size=32, seed=0)
    stream = tokenleap.generate("w2 w3", model=model, max_new_tokens=12, stream=True)
    pieces = list(stream)
    assert len(pieces) > 1
    assert "".join(pieces) == stream.result.text
    assert stream.result.text == model.decode(stream.result.token_ids)


def test_stop_string_cuts_text_and_tokens(tiny):
    model = tiny(vocab_size=32, seed=0)
    free = tokenleap.generate("w2 w3", model=model, max_new_tokens=12)
    stop_word = free.text.split()[4]
    cut = tokenleap.generate("w2 w3", model=model, max_new_tokens=12, stop=stop_word)
    assert cut.finish_reason == "stop"
    assert stop_word not in cut.text and free.text.startswith(cut.text)
    assert cut.token_ids == free.token_ids[: len(cut.token_ids)]
    stream = tokenleap.generate("w2 w3", model=model, max_new_tokens=12, stop=[stop_word], stream=True)
    assert "".join(stream) == cut.text


def test_messages_and_token_ids_are_accepted(tiny):
    model = tiny(vocab_size=32, seed=0)
    by_ids = tokenleap.generate([2, 3], model=model, max_new_tokens=5)
    by_text = tokenleap.generate("w2 w3", model=model, max_new_tokens=5)
    assert by_ids.token_ids == by_text.token_ids


def test_context_limit(tiny):
    model = tiny(vocab_size=32, seed=0, max_position_embeddings=16)
    with pytest.raises(TokenleapError, match="context"):
        tokenleap.generate(" ".join(["w5"] * 16), model=model)
    # A prompt that fits but leaves little room: generation ends at the context, not past it.
    r = tokenleap.generate(" ".join(["w5"] * 12), model=model, max_new_tokens=50)
    assert len(r.token_ids) == 4 and r.finish_reason == "length"
    r = tokenleap.generate(" ".join(["w5"] * 12), method="sps", model=model, draft=model, max_new_tokens=50, gamma=5)
    assert len(r.token_ids) == 4


BAD_INPUTS = [
    (dict(prompt=""), "empty"),
    (dict(prompt="   "), "empty"),
    (dict(max_new_tokens=0), "max_new_tokens"),
    (dict(max_new_tokens=-3), "max_new_tokens"),
    (dict(temperature=-1.0), "temperature"),
    (dict(top_p=0.0), "top_p"),
    (dict(top_p=1.2), "top_p"),
    (dict(top_k=-2), "top_k"),
    (dict(method="sps", gamma=-1), "gamma"),
    (dict(method="sps", gamma="4"), "gamma"),
    (dict(method="nope"), "unknown method"),
    (dict(method="ar", gamma=2), "no option"),
    (dict(prompt=[2, 999]), "outside the vocabulary"),
    (dict(model="/no/such/dir"), "unknown model"),
    (dict(draft="/no/such/draft.gguf", method="sps"), "GGUF file not found"),
    (dict(stop=[""]), "stop"),
]


@pytest.mark.parametrize("kwargs,message", BAD_INPUTS)
def test_bad_input_is_a_clear_error_and_nothing_breaks(tiny, kwargs, message):
    model = tiny(vocab_size=32, seed=0)
    call = dict(prompt="w2 w3", model=model, draft=model, max_new_tokens=4)
    call.update(kwargs)
    with pytest.raises(TokenleapError, match=message):
        tokenleap.generate(call.pop("prompt"), **call)
    # The same model keeps working afterwards.
    assert len(tokenleap.generate("w2 w3", model=model, max_new_tokens=4).token_ids) == 4


def test_draft_with_another_vocabulary_is_refused(tiny):
    target, other = tiny(vocab_size=32, seed=0), tiny(vocab_size=40, seed=0)
    with pytest.raises(TokenleapError, match="vocabulary"):
        tokenleap.generate("w2", method="sps", model=target, draft=other)


def test_sps_without_draft_is_refused(tiny):
    with pytest.raises(TokenleapError, match="needs a draft"):
        tokenleap.generate("w2", method="sps", model=tiny(vocab_size=32, seed=0))
