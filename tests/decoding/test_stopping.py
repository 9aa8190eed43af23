from tokenleap.decoding.stopping import StopCondition, TextStream


def test_stop_reasons():
    stop = StopCondition(max_new_tokens=3, eos_token_ids=frozenset({9}), stop_strings=("END",))
    assert stop.check([1], "a") is None
    assert stop.check([1, 9], "a") == "eos"
    assert stop.check([1, 2], "xEND") == "stop"
    assert stop.check([1, 2, 3], "abc") == "length"
    assert stop.cut_text("hello END world END") == "hello "


def test_text_stream_holds_back_partial_stop_strings_and_utf8():
    stream = TextStream(lambda ids: "".join(ids), stop_strings=("STOP",))
    assert stream.settled("hello S") == "hello "  # "S" could start STOP
    assert stream.settled("hello SX") == "SX"
    assert stream.settled("hello SX caf\ufffd") == " caf"  # incomplete UTF-8 held back
    assert stream.flush("hello SX café") == "é"
