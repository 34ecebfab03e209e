"""The HTML checks of the browser tests: strict HTML5 parsing and labelled controls."""

from __future__ import annotations

import pytest

from tests.support.browser import strict_parse, unlabelled_controls


def page(body: str, *, doctype: str = "<!DOCTYPE html>\n") -> str:
    return (
        f'{doctype}<html lang="en">\n<head>\n<meta charset="utf-8">\n<title>t</title>\n</head>\n'
        f"<body>\n{body}\n</body>\n</html>\n"
    )


def test_a_valid_page_parses() -> None:
    strict_parse(page('<main><h1>Keys</h1><form><input name="q" aria-label="q"></form></main>'))


def test_a_stray_end_tag_fails_with_its_position() -> None:
    with pytest.raises(AssertionError) as failure:
        strict_parse(page("<div><p>one</p></div>\n</div>"))
    message = str(failure.value)
    assert "not valid HTML5" in message
    assert "line 9, col 6" in message  # the stray </div>
    assert "div" in message
    assert "</div>" in message  # the offending source line


def test_a_missing_doctype_fails() -> None:
    with pytest.raises(AssertionError, match="(?i)doctype"):
        strict_parse(page("<p>hi</p>", doctype=""))


def test_a_duplicate_attribute_fails() -> None:
    with pytest.raises(AssertionError, match="(?i)duplicate"):
        strict_parse(page('<p class="a" class="b">hi</p>'))


def test_every_error_is_listed() -> None:
    with pytest.raises(AssertionError, match=r"\(2 parse errors\)"):
        strict_parse(page('<p class="a" class="b">hi</p>\n</div>'))


def test_each_form_of_label_names_a_control() -> None:
    html = page(
        """
<input name="a" aria-label="A">
<span id="b-label">B</span><input name="b" aria-labelledby="b-label">
<label>C <input name="c"></label>
<label for="d">D</label><input id="d" name="d">
<label>E <select name="e"><option>one</option></select></label>
<label for="f">F</label><textarea id="f" name="f"></textarea>
<button type="submit">Save</button>
<button aria-label="Close">&times;</button>
<button><img src="x.png" alt="Delete"></button>
<input type="submit">
<input type="button" value="Go">
<input type="image" src="x.png" alt="Search">
"""
    )
    assert unlabelled_controls(html) == []


def test_a_bare_input_is_reported() -> None:
    html = page('<label for="other">Other</label><input name="key"><input id="k" type="text">')
    assert unlabelled_controls(html) == ['input name="key"', 'input type="text" id="k"']


def test_hidden_inputs_are_ignored() -> None:
    assert unlabelled_controls(page('<input type="hidden" name="csrf" value="x">')) == []


def test_an_empty_button_is_reported() -> None:
    html = page('<button id="close"></button><button name="x">  </button><input type="button">')
    assert unlabelled_controls(html) == [
        'button id="close"',
        'button name="x"',
        'input type="button"',
    ]


def test_empty_or_dangling_labels_do_not_count() -> None:
    html = page(
        """
<input name="a" aria-label=" ">
<input name="b" aria-labelledby="nowhere">
<label><input name="c"></label>
<label for="d"></label><input id="d" name="d">
<select name="e"><option>one</option></select>
<textarea name="f">text is not a label</textarea>
"""
    )
    assert unlabelled_controls(html) == [
        'input name="a"',
        'input name="b"',
        'input name="c"',
        'input name="d" id="d"',
        'select name="e"',
        'textarea name="f"',
    ]
