"""The origin body as the aiohttp transport hands it to httpx: chunks as received, no join."""

from __future__ import annotations

import asyncio
from typing import Any
from unittest import mock

import aiohttp
import httpx
import pytest
from aiohttp.streams import StreamReader

from app.upstream.client import _AiohttpBody


def body_of(*chunks: bytes) -> tuple[_AiohttpBody, StreamReader]:
    protocol: Any = mock.Mock()
    reader = StreamReader(protocol, 2**16, loop=asyncio.get_running_loop())
    for chunk in chunks:
        reader.feed_data(chunk)
    reader.feed_eof()
    response: Any = mock.Mock(spec=aiohttp.ClientResponse)
    response.content = reader
    return _AiohttpBody(response, httpx.Request("GET", "http://origin.test/")), reader


async def test_buffered_chunks_are_handed_on_as_they_are_not_joined() -> None:
    # Several socket reads buffered before the fetch task runs: joining them would copy
    # every byte of a miss once more (readany() did) before the slice buffer copies it.
    chunks = [b"a" * 300_000, b"b" * 200_000, b"c" * 7]
    body, _ = body_of(*chunks)
    got = [chunk async for chunk in body]
    assert got == chunks
    assert all(g is c for g, c in zip(got, chunks, strict=True))


async def test_an_empty_body_ends_at_once() -> None:
    body, _ = body_of()
    assert [chunk async for chunk in body] == []


async def test_a_body_that_breaks_off_raises_the_httpx_error() -> None:
    body, reader = body_of(b"x" * 10)
    reader._eof = False  # noqa: SLF001 - the break comes after the first chunk
    reader.set_exception(aiohttp.ClientPayloadError("truncated"))
    with pytest.raises(httpx.RemoteProtocolError):
        async for _ in body:
            pass
