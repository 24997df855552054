"""Chunked transfer coding, decoded incrementally however the bytes are split."""

from __future__ import annotations

import pytest

from dataplane.http1 import ChunkedDecoder

BODY = b"5;name=value\r\nhello\r\n1A\r\n" + b"x" * 26 + b"\r\n0\r\nx-trailer: 1\r\n\r\n"


def decode(pieces: list[bytes]) -> tuple[bytes, ChunkedDecoder]:
    decoder = ChunkedDecoder()
    out = b"".join(decoder.feed(p) for p in pieces)
    return out, decoder


@pytest.mark.parametrize("split", [1, 2, 3, 7, len(BODY)])
def test_any_split_of_the_bytes_decodes_the_same(split: int) -> None:
    out, decoder = decode([BODY[i : i + split] for i in range(0, len(BODY), split)])
    assert out == b"hello" + b"x" * 26
    assert decoder.done and not decoder.leftover


def test_it_is_not_done_before_the_last_chunk_and_its_blank_line() -> None:
    out, decoder = decode([BODY[:-2]])
    assert out == b"hello" + b"x" * 26 and not decoder.done
    assert decoder.feed(b"\r\n") == b"" and decoder.done


def test_bytes_past_the_end_are_left_over() -> None:
    _, decoder = decode([b"0\r\n\r\nHTTP/1.1 200 OK"])
    assert decoder.done and decoder.leftover


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        (b"zz\r\n", "bad chunk size"),
        (b"-1\r\n", "bad chunk size"),
        (b"2\r\nabc\r\n", "overran"),
        (b"1" * 70_000, "too long"),
    ],
)
def test_malformed_framing_is_refused(body: bytes, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        ChunkedDecoder().feed(body)
