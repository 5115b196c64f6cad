"""Build the device code into what a board runs: a ROMFS of compiled modules.

- Firmware banks (ESP32): the ROMFS rides in a virtual ESP32 app image
  (`app.bin`, the OTA payload) and in a flashable `firmware.bin` (at 0x1000).
- App banks (nRF52840): the ROMFS itself is the bank image (`app.romfs`).

The ROMFS holds `hanfw/` (compiled by mpy-cross) and the board's `hal.py`.
`boot.py` and `main.py` are not in it: they live on the board's filesystem.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

from . import boardspec, devcode
from .romfs import build_romfs_dir
from .vboard import firmware as vfirmware


def build_romfs_for(board: str, extra: dict[str, bytes] | None = None) -> bytes:
    """ROMFS image of the device package + the board's hal.py (+ extra files, for tests)."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        compiled = devcode.compiled_tree()
        for src in compiled.rglob("*"):
            rel = src.relative_to(compiled)
            if src.is_file() and rel.parts[0] == "hanfw":
                dst = root / rel
                dst.parent.mkdir(parents=True, exist_ok=True)
                dst.write_bytes(src.read_bytes())
        hal = boardspec.load_board(board).hal_path
        if hal.exists():
            devcode.compile_file(hal, root / "hal.mpy")
        for name, data in (extra or {}).items():
            p = root / name
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(data)
        return build_romfs_dir(root, compile=True)


def build(board: str, version: str, outdir: str | Path, secure_version: int = 0,
          extra: dict[str, bytes] | None = None) -> dict[str, Path]:
    """Write the board's firmware files into outdir; returns their paths by kind."""
    spec = boardspec.load_board(board)
    out = Path(outdir)
    out.mkdir(parents=True, exist_ok=True)
    romfs = build_romfs_for(board, extra)
    if spec.bank_kind == "firmware":
        app = vfirmware.build_app_image(romfs, version, secure_version=secure_version)
        offset, image = vfirmware.build_flash_image(spec, app)
        (out / "app.bin").write_bytes(app)
        (out / "firmware.bin").write_bytes(image)
        return {"app": out / "app.bin", "firmware": out / "firmware.bin"}
    (out / "app.romfs").write_bytes(romfs)
    return {"app": out / "app.romfs"}
