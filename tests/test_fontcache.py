"""The font-cache notice: one line on a terminal, before matplotlib builds its font cache, and
never when the cache exists or the output is not a terminal."""

import io
import os
import subprocess
import sys

import matplotlib

from pyro_vae.eval import fontcache


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_the_notice_is_printed_once_the_cache_is_missing(tmp_path, monkeypatch):
    monkeypatch.setattr(matplotlib, "get_cachedir", lambda: str(tmp_path))
    terminal, pipe = _Terminal(), io.StringIO()
    assert fontcache.announce_font_cache(terminal)
    assert terminal.getvalue() == fontcache.MESSAGE + "\n"
    assert not fontcache.announce_font_cache(pipe) and pipe.getvalue() == ""  # no terminal
    (tmp_path / "fontlist-v390.json").write_text("{}")  # what matplotlib writes once built
    quiet = _Terminal()
    assert not fontcache.announce_font_cache(quiet) and quiet.getvalue() == ""


def test_the_cache_matplotlib_builds_is_the_one_looked_for(tmp_path, monkeypatch):
    """A fresh matplotlib configuration folder has no cache; after a process imported
    matplotlib's font manager in it (what the first figure does), it has."""
    monkeypatch.setattr(matplotlib, "get_cachedir", lambda: str(tmp_path))
    assert not fontcache.font_cache_exists()
    env = {**os.environ, "MPLCONFIGDIR": str(tmp_path)}
    code = "import matplotlib.font_manager"
    subprocess.run([sys.executable, "-c", code], check=True, env=env, timeout=300)
    assert fontcache.font_cache_exists()
    assert not fontcache.announce_font_cache(_Terminal())
