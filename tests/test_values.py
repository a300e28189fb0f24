"""Setting values as people type them: sizes, numbers, booleans; and how --help shows them."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from captify_ws.config import Settings
from captify_ws.errors import ConfigError
from captify_ws.values import parse_bool, parse_float, parse_int, parse_size, show_size

pytestmark = pytest.mark.unit

SIZE_ERROR = "is not a size (use 16m, 512k, 1g)"
VALID_SIZE = re.compile(r"\s*(\d+(\.\d+)?|\.\d+)\s*[kmgKMG]?([iI]?[bB])?\s*")


@pytest.mark.parametrize(("text", "size"), [
    ("16m", 16 << 20), ("16M", 16 << 20), ("16MiB", 16 << 20), ("16mb", 16 << 20),
    ("512k", 512 << 10), ("1g", 1 << 30), ("1024", 1024), ("1.5k", 1536), (" 8m ", 8 << 20),
    ("0", 0), ("64kb", 64 << 10),
])
def test_sizes_as_written_in_the_readme(text: str, size: int) -> None:
    """k/m/g are powers of 1024, in any case, with an optional (i)b."""
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["16x", "m", "", "-1m", "16 mm", "1e3", "sixteen", "16m!",
                                  "0x10", "1,5m", "∞"])
def test_a_bad_size_says_how_to_write_one(text: str) -> None:
    """Anything else: `<text> is not a size (use 16m, 512k, 1g)`."""
    with pytest.raises(ValueError, match=re.escape(SIZE_ERROR)):
        parse_size(text)


@given(st.text(max_size=12))
def test_any_text_is_a_size_or_the_message(text: str) -> None:
    """Generated: every string either matches the size grammar and parses, or gets the one
    message — never a Python error such as `invalid literal for int()`."""
    if VALID_SIZE.fullmatch(text) and text.strip():
        assert parse_size(text) >= 0
    else:
        with pytest.raises(ValueError, match=re.escape(SIZE_ERROR) + "$"):
            parse_size(text)


@given(st.integers(min_value=0, max_value=1 << 40))
def test_shown_sizes_read_back(size: int) -> None:
    """What --help shows for a size parses back to the same number of bytes."""
    assert parse_size(show_size(size)) == size


@pytest.mark.parametrize(("parse", "text", "message"), [
    (parse_int, "80.5", "80.5 is not a whole number"),
    (parse_float, "nan", "nan is not a finite number"),
    (parse_float, "soon", "soon is not a number"),
    (parse_bool, "maybe", "maybe is not true or false"),
])
def test_other_values_name_what_was_typed(parse: object, text: str, message: str) -> None:
    """Numbers and booleans say what was typed and what was expected."""
    with pytest.raises(ValueError, match=re.escape(message)):
        parse(text)  # type: ignore[operator]


@pytest.mark.parametrize("name", [o.name for o in Settings.options()
                                  if o.metadata["parse"] in (int, float)])
def test_every_numeric_setting_explains_a_typo(name: str) -> None:
    """Table over every int/float setting: a typo in its variable gets the friendly line."""
    variable = Settings.env_name(name)
    with pytest.raises(ConfigError, match=rf"^{variable}=x2: x2 is not a (whole )?number$"):
        Settings.load({variable: "x2"})
