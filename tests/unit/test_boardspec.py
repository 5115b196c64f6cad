"""Board facts come from boards/*/board.toml only: a board added as a folder is offered by every
--board option, and the flasher's chips and offsets are the board.toml's."""
import os
import shutil
import subprocess
import sys

import pytest
from click.testing import CliRunner

from hanota import boardspec, flasher
from hanota.cli import cli
from hanota.vboard import layout

NEW = "vboard-test"


@pytest.fixture
def boards_root(tmp_path, monkeypatch):
    """A temporary boards folder: the checkout's boards plus NEW (a copy of vboard-esp32's
    board.toml, renamed, written at 0x2000)."""
    root = tmp_path / "boards"
    shutil.copytree(boardspec.BOARDS_ROOT, root)
    (root / NEW).mkdir()
    text = (root / "vboard-esp32" / "board.toml").read_text()
    assert text.count('name = "vboard-esp32"') == 1 and text.count("write_offset = 0x1000") == 1
    text = text.replace('name = "vboard-esp32"', 'name = "%s"' % NEW)
    (root / NEW / "board.toml").write_text(text.replace("write_offset = 0x1000", "write_offset = 0x2000"))
    monkeypatch.setenv(boardspec.BOARDS_ENV, str(root))
    return root


def test_importing_the_board_facts_leaves_the_virtual_board_out():
    code = ("import sys, hanota.boardspec, hanota.flasher\n"
            "print(sorted(m for m in sys.modules if m.startswith('hanota.vboard')))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"


def test_board_lists_are_read_from_the_folders():
    assert boardspec.board_names() == ["esp32", "esp32s3", "nrf52840", "vboard-esp32", "vboard-nrf52840"]
    assert boardspec.board_names(virtual=True) == ["vboard-esp32", "vboard-nrf52840"]
    assert boardspec.board_names(flasher="esptool") == ["esp32", "esp32s3", "vboard-esp32"]
    assert boardspec.board_names(flasher="uf2") == ["nrf52840"]
    # the virtual board's module hands out the same objects
    assert layout.load_board is boardspec.load_board and layout.Board is boardspec.Board


def test_flasher_offsets_come_from_board_toml():
    for name in boardspec.board_names(flasher="esptool"):
        spec = boardspec.load_board(name)
        assert flasher.esptool_chip(name) == flasher.ChipInfo(spec.chip, spec.write_offset)
    assert flasher.esptool_chip("esp32").firmware_offset == 0x1000
    assert flasher.esptool_chip("esp32s3").firmware_offset == 0
    nrf = boardspec.load_board("nrf52840")
    assert nrf.write_offset == nrf.region("firmware").offset == 0x27000
    with pytest.raises(flasher.FlashError, match="choose from esp32, esp32s3, vboard-esp32"):
        flasher.esptool_chip("nrf52840")
    with pytest.raises(flasher.FlashError, match="cannot be flashed"):
        flasher.flash_method("vboard-nrf52840")


@pytest.mark.parametrize("args", [["vboard", "start"], ["firmware", "build"], ["board", "flash"],
                                  ["board", "deploy"], ["image", "verify"]])
def test_a_new_board_folder_is_offered_by_every_board_option(boards_root, args):
    r = CliRunner().invoke(cli, args + ["--help"])
    assert r.exit_code == 0, r.output
    assert NEW in r.output and "vboard-esp32" in r.output


def test_a_new_board_is_used_by_the_loader_and_the_flasher(boards_root):
    assert NEW in boardspec.board_names(virtual=True)
    assert flasher.esptool_chip(NEW) == flasher.ChipInfo("esp32", 0x2000)
    assert boardspec.load_board(NEW).path == boards_root / NEW / "board.toml"


def test_an_unknown_board_is_refused_naming_the_known_ones(boards_root):
    r = CliRunner().invoke(cli, ["vboard", "start", "--board", "no-such-board", "--name", "x"])
    assert r.exit_code == 2
    assert "no-such-board" in r.output and NEW in r.output and "vboard-nrf52840" in r.output
    with pytest.raises(boardspec.LayoutError, match=NEW):
        boardspec.load_board("no-such-board")


def test_without_the_override_the_checkout_boards_are_used(monkeypatch):
    monkeypatch.delenv(boardspec.BOARDS_ENV, raising=False)
    assert boardspec.boards_root() == boardspec.BOARDS_ROOT
    assert (boardspec.BOARDS_ROOT / "esp32" / "board.toml").is_file()
    assert os.path.isdir(boardspec.BOARDS_ROOT)
