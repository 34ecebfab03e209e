import pytest

from engine.stops import StopMatcher


def run(stops, pieces):
    matcher = StopMatcher(tuple(stops))
    out = "".join(matcher.feed(p) for p in pieces) + matcher.flush()
    return out, matcher.matched


@pytest.mark.parametrize(
    ("stops", "pieces", "text", "matched"),
    [
        ((), ["Hello", " world"], "Hello world", None),
        (("\n",), ["Paris", ".\nNext"], "Paris.", "\n"),
        (("END",), ["the E", "N", "D and more"], "the ", "END"),
        (("END",), ["the E", "N", "x"], "the ENx", None),
        (("abc", "b"), ["xab", "c"], "xa", "b"),
        (("stop",), ["no match at all"], "no match at all", None),
        (("</s>",), ["tail <", "/"], "tail </", None),
    ],
)
def test_stop_string_is_matched_on_text_across_token_boundaries(stops, pieces, text, matched):
    assert run(stops, pieces) == (text, matched)


def test_text_that_may_start_a_stop_string_is_held_back_until_it_cannot():
    matcher = StopMatcher(("STOP",))
    assert matcher.feed("go ST") == "go "
    assert matcher.feed("ART") == "START"


def test_nothing_is_emitted_after_a_match():
    matcher = StopMatcher(("x",))
    assert matcher.feed("ax") == "a"
    assert matcher.feed("more") == ""
    assert matcher.flush() == ""
