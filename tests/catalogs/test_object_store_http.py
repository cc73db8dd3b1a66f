"""A survey store read over plain HTTP (a web server with folder listings): read-only, fingerprinted by headers."""

from __future__ import annotations

import functools
import http.server
import os
import threading

import numpy as np
import pytest

pytest.importorskip("aiohttp", reason="https:// stores need aiohttp (pip install aiohttp)")


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        """No line per request on stderr."""


def test_a_store_served_over_http_is_read_and_never_written(tmp_path):
    from lensengine.catalogs.store import ChunkReadError, CutoutBatch, SurveyStore
    from lensengine.catalogs.validate import validate_store

    n = 16
    rng = np.random.default_rng(2)
    nisp = rng.gamma(2.0, 40.0, (n, 3, 66, 66)).astype(np.float32)
    with SurveyStore.build(tmp_path / "s.zarr", survey="http test", bands=("Y", "J", "H"), chunk_size=8) as store:
        store.append("A", CutoutBatch(object_id=np.arange(n, dtype=np.int64) + 7, ra=np.zeros(n), dec=np.zeros(n),
                                      vis=None, nisp=nisp, flags=np.zeros(n, np.uint32)))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0),
                                             functools.partial(_QuietHandler, directory=str(tmp_path)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/s.zarr"
        remote = SurveyStore.open(url)
        assert remote.tiles == ["A"] and remote.total_cutouts() == n
        batch = remote.read_chunk("A", 1)
        np.testing.assert_array_equal(batch.nisp, nisp[8:])
        assert batch.object_id.tolist() == list(range(15, 23))
        assert validate_store(url) == []
        # the resume fingerprint sees a rewritten chunk through the server's Last-Modified header
        before = remote.fingerprint("A")[0]
        chunk = tmp_path / "s.zarr" / "tiles" / "A" / "nisp" / "c" / "1" / "0" / "0" / "0"
        stat = chunk.stat()
        os.utime(chunk, ns=(stat.st_atime_ns, stat.st_mtime_ns + 5 * 10**9))
        assert SurveyStore.open(url).fingerprint("A")[0] != before
        # a lost object reads as fill values through zarr: it is found and the chunk is unreadable
        (tmp_path / "s.zarr" / "tiles" / "A" / "flags" / "c" / "0").unlink()  # all-zero flags: all fill
        (tmp_path / "s.zarr" / "tiles" / "A" / "nisp" / "c" / "1" / "0" / "0" / "0").unlink()
        fresh = SurveyStore.open(url)
        for index, array in ((0, "flags"), (1, "nisp")):
            with pytest.raises(ChunkReadError, match=f"array '{array}': chunk file missing"):
                fresh.read_chunk("A", index)
        assert [p.kind for p in validate_store(url)] == ["missing-chunk", "missing-chunk"]
        with pytest.raises(ValueError, match="read-only"):
            SurveyStore.create(f"http://127.0.0.1:{server.server_address[1]}/new.zarr", survey="x")
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def test_credentials_in_a_url_are_refused_without_echoing_them():
    from lensengine.catalogs.store import SurveyStore

    with pytest.raises(ValueError, match="holds credentials") as info:
        SurveyStore.open("https://reader:s3cret@data.example.org/survey.zarr")
    assert "s3cret" not in str(info.value) and "reader" not in str(info.value)
